//! Slot handles and the pool's slot bookkeeping: which slots are allocated,
//! the generation of each (so a handle kept past a free is refused), and per
//! slot and layer whether the speculative scratch holds a verify that is still
//! current (so a commit cannot copy stale or never-written scratch).

use crate::error::{Error, Result};

/// A request's slot in a pool: an index (index 0 is the padding slot and never
/// handed out) and the generation the pool handed it out with. Freeing a slot
/// bumps its generation, so a handle kept past the free (or a batch built
/// from it) is refused with [`Error::StaleSlot`] once the index has a new
/// owner, and with [`Error::SlotNotAllocated`] before that.
///
/// Bindings pass slots across as one integer: [`Slot::to_raw`] and
/// [`Slot::from_raw`] are that representation (index in the low 32 bits,
/// generation in the high 32 bits) and stay stable.
///
/// ```
/// use deltanet_core::Slot;
/// let s = Slot::from_raw(7 | (3 << 32));
/// assert_eq!((s.index(), s.generation()), (7, 3));
/// assert_eq!(Slot::from_raw(s.to_raw()), s);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    // Field order makes the derived `Ord` index-major.
    index: u32,
    generation: u32,
}

impl Slot {
    /// The slot with `index` and `generation`. Only a pool hands out slots
    /// that are valid; anything else is refused by every pool operation.
    pub const fn new(index: u32, generation: u32) -> Self {
        Slot { index, generation }
    }
    /// The index as `usize` (row of the slot in every pool buffer).
    pub fn index(self) -> usize {
        self.index as usize
    }
    /// The index as handed out (`u32`, as error variants report it).
    pub fn index_u32(self) -> u32 {
        self.index
    }
    /// The generation this handle was handed out with.
    pub fn generation(self) -> u32 {
        self.generation
    }
    /// The handle as one integer: index in the low 32 bits, generation in the high 32.
    pub fn to_raw(self) -> u64 {
        u64::from(self.index) | (u64::from(self.generation) << 32)
    }
    /// The inverse of [`to_raw`](Self::to_raw); every `u64` is some handle
    /// (whether the pool accepts it is checked when it is used).
    pub fn from_raw(raw: u64) -> Self {
        Slot { index: raw as u32, generation: (raw >> 32) as u32 }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({}#{})", self.index, self.generation)
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (generation {})", self.index, self.generation)
    }
}

fn reserve<T>(n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory { bytes: n.saturating_mul(std::mem::size_of::<T>()) })?;
    Ok(v)
}

fn filled<T: Clone>(n: usize, value: T) -> Result<Vec<T>> {
    let mut v = reserve(n)?;
    v.resize(n, value);
    Ok(v)
}

/// Slot bookkeeping of one pool; the pool keeps it behind its mutex.
#[derive(Debug)]
pub(crate) struct SlotAllocator {
    allocated: Vec<bool>,
    generation: Vec<u32>,
    free: Vec<u32>,
    /// `[layer * rows + slot]`: the scratch of (slot, layer) holds the result
    /// of a verify that nothing has made stale since.
    verified: Vec<bool>,
    rows: usize,
}

impl SlotAllocator {
    /// `slots` allocatable slots (plus the padding row) in `layers` layers.
    /// The sizes were validated with the pool config, so the products fit;
    /// bookkeeping the host cannot hold is [`Error::OutOfMemory`], not an abort.
    pub(crate) fn new(slots: usize, layers: usize) -> Result<Self> {
        let rows = slots + 1;
        let mut free = reserve::<u32>(slots)?;
        free.extend((1..=slots as u32).rev());
        Ok(SlotAllocator {
            allocated: filled(rows, false)?,
            generation: filled(rows, 0)?,
            free,
            verified: filled(rows * layers, false)?,
            rows,
        })
    }

    /// Slots currently free.
    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Whether `slot` is allocated with this generation.
    pub(crate) fn is_allocated(&self, slot: Slot) -> bool {
        self.check(0, slot).is_ok()
    }

    /// Checks one slot (at position `index` of a list): not padding, in range,
    /// allocated, and of the generation handed out.
    pub(crate) fn check(&self, index: usize, slot: Slot) -> Result<()> {
        let s = slot.index_u32();
        if s == 0 {
            return Err(Error::PaddingSlot { index });
        }
        if slot.index() >= self.rows {
            return Err(Error::SlotOutOfRange { index, slot: s, capacity: self.rows - 1 });
        }
        if !self.allocated[slot.index()] {
            return Err(Error::SlotNotAllocated { index, slot: s });
        }
        let current = self.generation[slot.index()];
        if slot.generation() != current {
            return Err(Error::StaleSlot { index, slot: s, generation: slot.generation(), current });
        }
        Ok(())
    }

    /// Checks every slot and that no index appears twice.
    pub(crate) fn check_distinct(&self, slots: &[Slot]) -> Result<()> {
        let mut seen: Vec<Option<usize>> = Vec::new();
        for (i, &s) in slots.iter().enumerate() {
            self.check(i, s)?;
            if seen.len() <= s.index() {
                seen.resize(s.index() + 1, None);
            }
            if let Some(first) = seen[s.index()] {
                return Err(Error::DuplicateSlot { slot: s.index_u32(), first, second: i });
            }
            seen[s.index()] = Some(i);
        }
        Ok(())
    }

    /// Hands out `n` slots with their current generations; all or nothing.
    pub(crate) fn alloc(&mut self, n: usize) -> Result<Vec<Slot>> {
        if n > self.free.len() {
            return Err(Error::PoolExhausted { requested: n, available: self.free.len() });
        }
        let at = self.free.len() - n;
        let taken: Vec<u32> = self.free.drain(at..).rev().collect();
        Ok(taken
            .into_iter()
            .map(|s| {
                self.allocated[s as usize] = true;
                Slot::new(s, self.generation[s as usize])
            })
            .collect())
    }

    /// Frees `slots`, all or nothing: each must be allocated with its current
    /// generation (a stale handle must not free the index's new owner). The
    /// generation is bumped so every handle to the freed slot goes stale.
    pub(crate) fn free(&mut self, slots: &[Slot]) -> Result<()> {
        for (i, &s) in slots.iter().enumerate() {
            match self.check(i, s) {
                Err(Error::SlotNotAllocated { slot, .. }) => return Err(Error::DoubleFree { slot }),
                other => other?,
            }
            if slots[..i].iter().any(|p| p.index() == s.index()) {
                return Err(Error::DoubleFree { slot: s.index_u32() });
            }
        }
        for &s in slots {
            let i = s.index();
            self.allocated[i] = false;
            // Wraps after 2^32 frees of one slot; a handle kept that long could alias.
            self.generation[i] = self.generation[i].wrapping_add(1);
            self.forget_verify(i);
            self.free.push(s.index_u32());
        }
        Ok(())
    }

    /// Whether the scratch of (`slot`, `layer`) holds a current verify.
    pub(crate) fn verified(&self, layer: usize, slot: usize) -> bool {
        self.verified[layer * self.rows + slot]
    }

    /// Records whether the scratch of (`slot`, `layer`) holds a current verify.
    pub(crate) fn set_verified(&mut self, layer: usize, slot: usize, current: bool) {
        self.verified[layer * self.rows + slot] = current;
    }

    /// The slot's state changed in every layer: no verify of it is current.
    pub(crate) fn forget_verify(&mut self, slot: usize) {
        let layers = self.verified.len() / self.rows;
        for layer in 0..layers {
            self.verified[layer * self.rows + slot] = false;
        }
    }

    /// Anything may have changed: no verify is current.
    pub(crate) fn forget_all_verifies(&mut self) {
        self.verified.iter_mut().for_each(|v| *v = false);
    }
}
