//! Commit of a V-major pool: copies only, of the accepted step.

use crate::common::*;
use deltanet_core::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn commit_copies_the_accepted_step_of_a_vmajor_pool() {
    let (rec, d) = setup(A2);
    let m = dims();
    let dd = 3;
    let mut pool = spec_pool(&d, dd);
    let s = pool.alloc(4).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let geo = *pool.geometry();
    let (sb, cb) = (geo.state_bytes(), geo.conv_bytes());
    let layer = 1;
    // Random scratch, as a verify of the two committed slots would leave it (current).
    let vb = VerifyBatch::chain(&pool, &[s[0], s[1]]).unwrap();
    pool.kernel_parts(layer, KernelAccess::Verify(&vb), |parts| {
        let scratch = parts.scratch.unwrap();
        let bytes: Vec<u8> = (0..parts.memory.len(scratch)).map(|_| rng.gen()).collect();
        parts.memory.write(scratch, 0, &bytes).unwrap();
        let windows = parts.windows.unwrap();
        let bytes: Vec<u8> = (0..parts.memory.len(windows)).map(|_| rng.gen()).collect();
        parts.memory.write(windows, 0, &bytes).unwrap();
        Ok(())
    })
    .unwrap();
    let batch = CommitBatch::new(&pool, &[s[0], s[1]], &[Some(2), Some(0)], &[Some(s[3]), None]).unwrap();
    let before = pool.export(s[2]).unwrap();
    rec.clear();
    d.commit(&mut pool, layer, &batch).unwrap();
    let (temporal, conv) = (desc_addr(&pool, BufferKind::Temporal, layer), desc_addr(&pool, BufferKind::Conv, layer));
    let (scratch, windows) = (desc_addr(&pool, BufferKind::Scratch, layer), desc_addr(&pool, BufferKind::ConvWindows, layer));
    let mut want = Vec::new();
    for (src_slot, a, dsts) in [(s[0], 2usize, vec![s[0], s[3]]), (s[1], 0, vec![s[1]])] {
        for dst in dsts {
            want.push((temporal + (dst.index() * sb) as u64, scratch + ((src_slot.index() * dd + a) * sb) as u64, sb));
            want.push((conv + (dst.index() * cb) as u64, windows + ((src_slot.index() * dd + a) * cb) as u64, cb));
        }
    }
    assert_eq!(copies(&rec.events()), want);
    assert!(rec.calls().is_empty(), "commit is copies only");
    // The bytes really moved: the committed slot exports (canonical K-major) to the scratch step's V-major state transposed.
    let mem = d.memory().clone();
    let parts = pool.parts_mut();
    let mut raw = vec![0u8; sb];
    mem.read(parts.scratch.unwrap(), geo.scratch_offset(layer, s[0].index(), 2), &mut raw).unwrap();
    let mut canon = vec![[0u8; 2]; sb / 2];
    let src: Vec<[u8; 2]> = raw.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
    convert_state(LayoutKind::VMajor, LayoutKind::KMajor, m.num_v_heads, m.head_k_dim, m.head_v_dim, &src, &mut canon).unwrap();
    let exported = pool.export(s[3]).unwrap();
    assert_eq!(&exported.temporal[layer * sb..(layer + 1) * sb], canon.concat().as_slice());
    assert_eq!(pool.export(s[2]).unwrap(), before, "untouched slots stay untouched");
}
