//! The C client (tests/c/client.c), compiled by the system C compiler
//! against libdeltanet.so, runs a serving scenario through the C ABI only:
//! chunked prefill continuing a state across calls (with a prefix-cache
//! snapshot), decode, chain and tree
//! verify + commit, export from a K-major pool and import into a V-major one.
//! Its inputs are fresh random values generated here; every output and state
//! it writes back is compared with the f64 oracle on the same inputs. The
//! bad-input calls are checked inside the C program (documented code, a
//! message, pool digest and output unchanged).

mod common;

use deltanet_conformance::DeltaInputs;
use facade::{DType, DeltaParams, ModelDims};
use std::io::Write;
use std::path::Path;

fn cat(parts: &[DeltaInputs]) -> DeltaInputs {
    let mut out = parts[0].clone();
    for p in &parts[1..] {
        out.tokens += p.tokens;
        out.q.extend(&p.q);
        out.k.extend(&p.k);
        out.v.extend(&p.v);
        out.g.extend(&p.g);
        out.beta.extend(&p.beta);
    }
    out
}

fn write_call(f: &mut impl Write, x: &DeltaInputs) {
    for a in [&x.q, &x.k, &x.v, &x.g, &x.beta] {
        common::write_record(f, a);
    }
}

#[test]
fn c_client_matches_the_oracle_and_refuses_bad_input() {
    let seed = common::fresh_seed();
    let dims = ModelDims::new(1, 2, 8, 6, 4).unwrap(); // must match HK, HV, KD, VD in client.c
    let params = DeltaParams::new(&dims);
    let row = dims.num_v_heads * dims.head_v_dim;
    let a = DeltaInputs::random(&dims, 85, DType::F32, seed);
    let b = DeltaInputs::random(&dims, 34, DType::F32, seed ^ 0x5eed);

    let dir = common::scratch("client");
    let (inputs, outputs, exe) = (dir.join("inputs.bin"), dir.join("outputs.bin"), dir.join("client"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&inputs).unwrap());
    for call in [
        cat(&[a.slice(0..50), b.slice(0..30)]),   // prefill: A's first chunk, all of B
        a.slice(50..80),                          // A's second chunk
        cat(&[a.slice(80..81), b.slice(30..31)]), // decode
        a.slice(81..84),                          // chain verify on A
        b.slice(31..34),                          // tree verify on B
        a.slice(84..85),                          // decode on the V-major pool
    ] {
        write_call(&mut f, &call);
    }
    f.into_inner().unwrap().sync_all().unwrap();

    common::compile(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/client.c"), &exe, false, &[]);
    let log = common::run(&exe, &[&inputs, &outputs]);
    assert!(log.contains("c client: ok"), "{log}");
    let out = common::read_records(&outputs);
    assert_eq!(out.len(), 10, "records written by the C client");

    let rows = |o: &[f64], r: std::ops::Range<usize>| o[r.start * row..r.end * row].to_vec();
    let path = |x: &DeltaInputs, idx: Vec<usize>| {
        let g = x.gather(&idx);
        g.oracle(&params, &[0, g.tokens], None)
    };
    let oa = path(&a, (0..84).collect());
    let ob = path(&b, (0..32).collect());
    let ob33 = path(&b, (0..33).collect());
    let b_tree: Vec<usize> = (0..32).chain([33]).collect();
    let ob_tree = path(&b, b_tree);
    let a_committed = path(&a, (0..83).collect());
    let a_final = path(&a, (0..83).chain([84]).collect());

    common::check("prefill chunk 1 (A and B)", &out[0], &[rows(&oa.o, 0..50), rows(&ob.o, 0..30)].concat(), seed);
    common::check("prefill chunk 2 (A continued)", &out[1], &rows(&oa.o, 50..80), seed);
    common::check("decode", &out[2], &[rows(&oa.o, 80..81), rows(&ob.o, 30..31)].concat(), seed);
    common::check("chain verify", &out[3], &rows(&oa.o, 81..84), seed);
    common::check("tree verify", &out[4], &[rows(&ob.o, 31..32), rows(&ob33.o, 32..33), rows(&ob_tree.o, 32..33)].concat(), seed);
    common::check("A after chain commit (K-major export)", &out[5], &a_committed.final_state, seed);
    common::check("B after tree commit (K-major export)", &out[6], &ob_tree.final_state, seed);
    common::check("prefix snapshot after 60 tokens of A", &out[7], &path(&a, (0..60).collect()).final_state, seed);
    common::check("decode on the V-major pool after import", &out[8], &rows(&a_final.o, 83..84), seed);
    common::check("A's final state (V-major export)", &out[9], &a_final.final_state, seed);
    // the same scenario on replay pools: verify and commit give the scratch pools' bits
    let replayed = dir.join("outputs-replay.bin");
    let log = common::run(&exe, &[&inputs, &replayed, Path::new("replay")]);
    assert!(log.contains("c client: ok"), "{log}");
    assert!(std::fs::read(&replayed).unwrap() == std::fs::read(&outputs).unwrap(), "replay pools differ from scratch pools");
    std::fs::remove_dir_all(&dir).ok();
}
