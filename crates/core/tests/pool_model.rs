//! Model checking: random sequences of alloc / free / copy / fork / export /
//! import / zero on a real pool against a plain reference model of slots and
//! their canonical contents. Every operation's outcome (success or the error
//! class) and every known slot's exported state must agree with the model;
//! a rejected operation must leave the pool's bytes unchanged.

use deltanet_core::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
    Alloc(usize),
    Free(Vec<u32>),
    Zero(Vec<u32>),
    Copy(u32, u32),
    Fork(u32),
    /// Import a fresh state made from this seed.
    Import(u32, u8),
    /// Export a slot and import the result into another.
    Transfer(u32, u32),
    /// Export, import, zero and free through a handle of an earlier generation.
    Stale(u32),
}

const CAP: u32 = 5;

fn slot() -> impl Strategy<Value = u32> {
    0..=CAP + 1
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..4).prop_map(Op::Alloc),
        prop::collection::vec(slot(), 0..3).prop_map(Op::Free),
        prop::collection::vec(slot(), 0..3).prop_map(Op::Zero),
        (slot(), slot()).prop_map(|(a, b)| Op::Copy(a, b)),
        slot().prop_map(Op::Fork),
        (slot(), any::<u8>()).prop_map(|(a, s)| Op::Import(a, s)),
        (slot(), slot()).prop_map(|(a, b)| Op::Transfer(a, b)),
        slot().prop_map(Op::Stale),
    ]
}

/// The reference: which slots are allocated, what each holds when known, and
/// each index's generation (bumped by every free).
#[derive(Default)]
struct Model {
    allocated: BTreeMap<u32, Option<HostState>>,
    generation: BTreeMap<u32, u32>,
}

impl Model {
    /// The current handle of index `s` (allocated or not).
    fn h(&self, s: u32) -> Slot {
        Slot::new(s, self.generation.get(&s).copied().unwrap_or(0))
    }
    fn hs(&self, slots: &[u32]) -> Vec<Slot> {
        slots.iter().map(|&s| self.h(s)).collect()
    }
    fn valid(&self, s: u32) -> bool {
        s != 0 && self.allocated.contains_key(&s)
    }
    fn distinct_valid(&self, slots: &[u32]) -> bool {
        let mut seen = std::collections::BTreeSet::new();
        slots.iter().all(|&s| self.valid(s) && seen.insert(s))
    }
}

fn state(cfg: &PoolConfig, seed: u8) -> HostState {
    let t: Vec<f32> = (0..cfg.layers * cfg.dims.state_elems()).map(|i| (i as f32 * 0.37 + seed as f32).sin()).collect();
    let c: Vec<f32> = (0..cfg.layers * cfg.dims.conv_elems()).map(|i| (i as f32 * 0.11 - seed as f32).cos()).collect();
    HostState::from_f32(cfg.layers, cfg.dims, cfg.state_dtype, cfg.conv_dtype, &t, &c).unwrap()
}

fn zero_state(cfg: &PoolConfig) -> HostState {
    let t = vec![0.0; cfg.layers * cfg.dims.state_elems()];
    let c = vec![0.0; cfg.layers * cfg.dims.conv_elems()];
    HostState::from_f32(cfg.layers, cfg.dims, cfg.state_dtype, cfg.conv_dtype, &t, &c).unwrap()
}

fn run<L: StateLayout>(ops: &[Op], state_dtype: DType) -> Result<(), TestCaseError> {
    let dims = ModelDims::new(1, 2, 5, 3, 3).unwrap();
    let cfg = PoolConfig::new(2, CAP as usize, dims).with_state_dtype(state_dtype).with_speculative(2);
    let mut pool: StatePool<HostMemory, L> = StatePool::new(HostMemory, cfg, &Capabilities::host_reference(L::KIND)).unwrap();
    let mut m = Model::default();
    for op in ops {
        let before = pool.digest().unwrap();
        let ok = match op {
            Op::Alloc(n) => {
                let r = pool.alloc(*n);
                // One rule for empty operations: alloc(0) is refused like every empty batch.
                let expect = *n >= 1 && *n <= CAP as usize - m.allocated.len();
                prop_assert_eq!(r.is_ok(), expect, "{:?}", op);
                if let Ok(slots) = &r {
                    prop_assert_eq!(slots.len(), *n);
                    for s in slots {
                        let i = s.index_u32();
                        prop_assert!(i != 0 && !m.allocated.contains_key(&i), "handed out a taken slot {:?}", s);
                        prop_assert_eq!(*s, m.h(i), "handed out with another generation than the model's");
                        m.allocated.insert(i, None);
                    }
                } else {
                    let why =
                        if *n == 0 { matches!(r, Err(Error::EmptyBatch { .. })) } else { matches!(r, Err(Error::PoolExhausted { .. })) };
                    prop_assert!(why, "not EmptyBatch (n = 0) or PoolExhausted: {:?}", r);
                }
                r.is_ok()
            }
            Op::Free(slots) => {
                let r = pool.free(&m.hs(slots));
                prop_assert_eq!(r.is_ok(), !slots.is_empty() && m.distinct_valid(slots), "{:?}: {:?}", op, r);
                if r.is_ok() {
                    for s in slots {
                        m.allocated.remove(s);
                        *m.generation.entry(*s).or_default() += 1;
                    }
                }
                r.is_ok()
            }
            Op::Zero(slots) => {
                let r = pool.zero(&m.hs(slots));
                prop_assert_eq!(r.is_ok(), !slots.is_empty() && m.distinct_valid(slots), "{:?}: {:?}", op, r);
                if r.is_ok() {
                    for s in slots {
                        m.allocated.insert(*s, Some(zero_state(&cfg)));
                    }
                }
                r.is_ok()
            }
            Op::Copy(a, b) => {
                let r = pool.copy(m.h(*a), m.h(*b));
                prop_assert_eq!(r.is_ok(), m.distinct_valid(&[*a, *b]), "{:?}: {:?}", op, r);
                if r.is_ok() {
                    let src = m.allocated[a].clone();
                    m.allocated.insert(*b, src);
                }
                r.is_ok()
            }
            Op::Fork(a) => {
                let r = pool.fork(m.h(*a));
                let expect = m.valid(*a) && m.allocated.len() < CAP as usize;
                prop_assert_eq!(r.is_ok(), expect, "{:?}: {:?}", op, r);
                if let Ok(s) = r {
                    prop_assert!(!m.allocated.contains_key(&s.index_u32()));
                    prop_assert_eq!(s, m.h(s.index_u32()));
                    let src = m.allocated[a].clone();
                    m.allocated.insert(s.index_u32(), src);
                }
                r.is_ok()
            }
            Op::Import(a, seed) => {
                let st = state(&cfg, *seed);
                let r = pool.import(m.h(*a), &st);
                prop_assert_eq!(r.is_ok(), m.valid(*a), "{:?}: {:?}", op, r);
                if r.is_ok() {
                    m.allocated.insert(*a, Some(st));
                }
                r.is_ok()
            }
            Op::Transfer(a, b) => {
                let r = pool.export(m.h(*a));
                prop_assert_eq!(r.is_ok(), m.valid(*a), "{:?}: {:?}", op, r);
                match r {
                    Ok(st) => {
                        let r2 = pool.import(m.h(*b), &st);
                        prop_assert_eq!(r2.is_ok(), m.valid(*b), "{:?}: {:?}", op, r2);
                        if r2.is_ok() {
                            let src = m.allocated[a].clone();
                            m.allocated.insert(*b, src);
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
            Op::Stale(a) => {
                // Every earlier generation of the index is refused by every operation.
                let g = m.generation.get(a).copied().unwrap_or(0);
                for old in (0..g).map(|g| Slot::new(*a, g)) {
                    let st = state(&cfg, 1);
                    let stale = |r: Result<(), Error>| match r {
                        Err(Error::StaleSlot { slot, generation, current, .. }) => {
                            slot == *a && generation == old.generation() && current == g && m.valid(*a)
                        }
                        Err(Error::SlotNotAllocated { .. } | Error::DoubleFree { .. }) => !m.valid(*a),
                        Err(Error::PaddingSlot { .. } | Error::SlotOutOfRange { .. }) => *a == 0 || *a > CAP,
                        _ => false,
                    };
                    prop_assert!(stale(pool.export(old).map(|_| ())), "export of stale {:?}", old);
                    prop_assert!(stale(pool.import(old, &st)), "import of stale {:?}", old);
                    prop_assert!(stale(pool.zero(&[old])), "zero of stale {:?}", old);
                    prop_assert!(stale(pool.free(&[old])), "free of stale {:?}", old);
                    prop_assert!(!pool.is_allocated(old));
                }
                false
            }
        };
        if !ok {
            prop_assert_eq!(pool.digest().unwrap(), before, "rejected {:?} changed pool bytes", op);
        }
        // the model and the pool agree on every slot and every known content
        prop_assert_eq!(pool.free_count(), CAP as usize - m.allocated.len());
        for s in 0..=CAP + 1 {
            prop_assert_eq!(pool.is_allocated(m.h(s)), m.valid(s), "slot {}", s);
        }
        for (s, st) in &m.allocated {
            if let Some(st) = st {
                prop_assert_eq!(&pool.export(m.h(*s)).unwrap(), st, "slot {} content after {:?}", s, op);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn kmajor_pool_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run::<KMajor>(&ops, DType::F32)?;
    }

    #[test]
    fn vmajor_bf16_pool_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run::<VMajor>(&ops, DType::BF16)?;
    }
}
