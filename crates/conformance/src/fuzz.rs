//! Fuzz entry points: batch-metadata validation driven by arbitrary bytes.
//! The cargo-fuzz target in `fuzz/` calls [`batch_metadata`]; a proptest in
//! deltanet-core runs it on random bytes in CI. It must never panic: every
//! malformed input is a typed error, and every batch that validates is
//! checked to be consistent with the pool it was validated against.

use deltanet_core::{
    Capabilities, CommitBatch, DecodeBatch, Error, ExtendBatch, HostMemory, KMajor, KernelAccess, LayoutKind, MambaStatePool, ModelDims,
    PoolConfig, Slot, Snapshot, StatePool, VerifyBatch,
};

/// Reads bytes as small integers; past the end it yields zeros.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn len(&mut self, max: usize) -> usize {
        self.u8() as usize % (max + 1)
    }
}

/// Builds a small pool from the first bytes, allocates and frees slots, then
/// builds extend / decode / verify / commit batches from the rest, checking
/// that whatever validates is consistent (slots allocated and distinct,
/// offsets increasing, snapshot positions in range, accepted steps < D).
pub fn batch_metadata(data: &[u8]) {
    let mut b = Bytes { data, pos: 0 };
    let dims = match ModelDims::new(1, 1 + b.len(1), 1 + b.len(3), 1 + b.len(3), 2) {
        Ok(d) => d,
        Err(_) => return,
    };
    let draft = b.len(3);
    let mut cfg = PoolConfig::new(1 + b.len(1), 1 + b.len(7), dims);
    if draft > 0 {
        cfg = cfg.with_speculative(draft);
    }
    let caps = Capabilities::host_reference(LayoutKind::KMajor);
    let Ok(mut pool) = StatePool::<HostMemory, KMajor>::new(HostMemory, cfg, &caps) else { return };
    let _ = pool.alloc(b.len(8));
    // Free some and allocate again: the freed handles (generation 0) go stale.
    let frees: Vec<Slot> = (0..b.len(2)).map(|_| Slot::new(b.u8() as u32 % 12, 0)).collect();
    if pool.free(&frees).is_ok() {
        let _ = pool.alloc(b.len(2));
    }
    let Ok(other) = StatePool::<HostMemory, KMajor>::new(HostMemory, cfg, &caps) else { return };
    let digest = pool.digest().expect("host digest");

    let slot = |b: &mut Bytes<'_>| {
        let index = if b.u8() < 250 { b.u8() as u32 % 12 } else { u32::MAX - b.u8() as u32 };
        Slot::new(index, b.len(2) as u32)
    };
    let consistent = |slots: &[Slot]| {
        let mut s = slots.to_vec();
        s.sort();
        s.dedup();
        s.len() == slots.len() && slots.iter().all(|&x| x.index() != 0 && pool.is_allocated(x))
    };

    // extend
    let n = b.len(4);
    let mut cu = Vec::with_capacity(n + 1);
    for _ in 0..n + 1 {
        cu.push(b.u16() as usize % 300);
    }
    let slots: Vec<Slot> = (0..b.len(4)).map(|_| slot(&mut b)).collect();
    let flags: Vec<bool> = (0..b.len(4)).map(|_| b.u8() % 2 == 1).collect();
    let snaps: Vec<Snapshot> =
        (0..b.len(2)).map(|_| Snapshot { seq: b.len(4), position: b.u16() as usize % 300, slot: slot(&mut b) }).collect();
    if let Ok(eb) = ExtendBatch::new(&pool, &cu, &slots, &flags) {
        assert!(consistent(eb.slots()), "extend batch with bad slots validated");
        assert!(eb.cu_seqlens().windows(2).all(|w| w[0] < w[1]) && eb.cu_seqlens()[0] == 0);
        assert_eq!(eb.tokens(), *cu.last().unwrap());
        assert!(eb.check_pool(&pool).is_ok());
        assert!(eb.check_pool(&other).is_err(), "foreign pool accepted");
        if let Ok(es) = eb.with_snapshots(&pool, &snaps) {
            for s in es.snapshots() {
                assert!(s.seq < es.num_seqs() && s.position >= 1 && s.position <= es.seq_len(s.seq));
                assert!(!es.slots().contains(&s.slot) && pool.is_allocated(s.slot));
            }
        }
    }
    // decode
    let slots: Vec<Slot> = (0..b.len(4)).map(|_| slot(&mut b)).collect();
    if let Ok(db) = DecodeBatch::new(&pool, &slots) {
        assert!(consistent(db.slots()) && db.tokens() == slots.len());
    }
    // verify
    let slots: Vec<Slot> = (0..b.len(3)).map(|_| slot(&mut b)).collect();
    let parents: Vec<i64> = (0..b.len(12)).map(|_| b.u8() as i8 as i64).collect();
    let _ = VerifyBatch::chain(&pool, &slots);
    let verified = VerifyBatch::tree(&pool, &slots, &parents).ok();
    if let Some(vb) = &verified {
        assert!(consistent(vb.slots()) && vb.draft() == draft && vb.tokens() == slots.len() * draft);
        for i in 0..vb.num_seqs() {
            for t in 0..vb.draft() {
                assert!(vb.parent(i, t).is_none_or(|p| p < t));
            }
        }
    }
    // commit
    let slots: Vec<Slot> = (0..b.len(3)).map(|_| slot(&mut b)).collect();
    // 0 draws a skipped request (nothing accepted), k > 0 accepted step k - 1
    let accepted: Vec<Option<usize>> = (0..b.len(3)).map(|_| b.len(5).checked_sub(1)).collect();
    let csnaps: Vec<Option<Slot>> = (0..b.len(3)).map(|_| if b.u8() & 1 == 0 { None } else { Some(slot(&mut b)) }).collect();
    let layer = b.len(3);
    assert_eq!(pool.digest().expect("host digest"), digest, "validation changed the pool");
    if let Ok(cb) = CommitBatch::new(&pool, &slots, &accepted, &csnaps) {
        assert!(!cb.slots().is_empty() && cb.accepted().iter().flatten().all(|&a| a < draft));
        assert!(cb.accepted().iter().zip(cb.snapshots()).all(|(a, s)| a.is_some() || s.is_none()), "a skipped request with a snapshot");
        let mut all = cb.slots().to_vec();
        all.extend(cb.snapshots().iter().flatten());
        assert!(consistent(&all));
        // Nothing was verified yet: refused (unless there is nothing to commit), nothing written.
        let r = pool.commit_accepted(layer, &cb);
        let nothing = cb.commits().next().is_none() && layer < cfg.layers;
        assert!(nothing || matches!(r, Err(Error::NoCurrentVerify { .. } | Error::LayerOutOfRange { .. })), "{r:?}");
        assert_eq!(pool.digest().expect("host digest"), digest, "refused commit changed the pool");
        // Mark the verify batch's slots verified (as a verify kernel would), then commit.
        if let Some(vb) = &verified {
            let _ = pool.kernel_parts(layer, KernelAccess::Verify(vb), |_| Ok(()));
        }
        let current = layer < cfg.layers && cb.commits().all(|c| pool.has_current_verify(c.slot, layer));
        let skipped: Vec<(Slot, bool)> = cb
            .slots()
            .iter()
            .zip(cb.accepted())
            .filter(|(_, a)| a.is_none())
            .map(|(&s, _)| (s, pool.has_current_verify(s, layer)))
            .collect();
        let r = pool.commit_accepted(layer, &cb);
        assert_eq!(r.is_ok(), current, "{r:?}");
        if r.is_ok() {
            assert!(cb.commits().all(|c| !pool.has_current_verify(c.slot, layer)), "commit did not consume its verify");
            assert!(skipped.iter().all(|&(s, was)| pool.has_current_verify(s, layer) == was), "commit changed a skipped request's verify");
        }
    }
}
