//! Memory layouts of the recurrent state and the conv state, and conversion
//! between them. Canonical order (import, export, replay files) is K-major
//! `[HV, K, V]` and channels-first `[conv_dim, W-1]`.

use crate::error::{Error, Result};

/// Which of the two recurrent-state layouts a buffer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayoutKind {
    /// `[HV, K, V]` per request ("V-last"): fla, transformers.
    KMajor,
    /// `[HV, V, K]` per request ("K-last"): Ascend aclnn, sglang/vLLM today.
    VMajor,
}

impl LayoutKind {
    /// Element offset of `(k, v)` within one head of `k_dim x v_dim`.
    #[inline(always)]
    pub fn offset(self, k_dim: usize, v_dim: usize, k: usize, v: usize) -> usize {
        match self {
            LayoutKind::KMajor => k * v_dim + v,
            LayoutKind::VMajor => v * k_dim + k,
        }
    }

    /// Name (`"k-major"` / `"v-major"`).
    pub fn name(self) -> &'static str {
        match self {
            LayoutKind::KMajor => "k-major",
            LayoutKind::VMajor => "v-major",
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::KMajor {}
    impl Sealed for super::VMajor {}
}

/// A recurrent-state layout as a type, so that a pool and a kernel of
/// different layouts do not compile together.
///
/// ```
/// use deltanet_core::{KMajor, VMajor, StateLayout, LayoutKind};
/// assert_eq!(KMajor::offset(4, 3, 1, 2), 1 * 3 + 2);
/// assert_eq!(VMajor::offset(4, 3, 1, 2), 2 * 4 + 1);
/// assert_eq!(VMajor::KIND, LayoutKind::VMajor);
/// ```
pub trait StateLayout: sealed::Sealed + Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    /// The runtime tag of this layout.
    const KIND: LayoutKind;
    /// Element offset of `(k, v)` within one head.
    #[inline(always)]
    fn offset(k_dim: usize, v_dim: usize, k: usize, v: usize) -> usize {
        Self::KIND.offset(k_dim, v_dim, k, v)
    }
}

/// K-major `[HV, K, V]` layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KMajor;
/// V-major `[HV, V, K]` layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VMajor;

impl StateLayout for KMajor {
    const KIND: LayoutKind = LayoutKind::KMajor;
}
impl StateLayout for VMajor {
    const KIND: LayoutKind = LayoutKind::VMajor;
}

/// Converts `heads` heads of `k_dim x v_dim` elements from one layout to
/// another (a plain copy when they agree). Works on any element type,
/// including raw bytes grouped per element, so it is exact.
/// Buffers shorter than `heads * K * V` elements (or sizes whose product
/// overflows) are an error, with `dst` unchanged.
pub fn convert_state<T: Copy>(
    from: LayoutKind,
    to: LayoutKind,
    heads: usize,
    k_dim: usize,
    v_dim: usize,
    src: &[T],
    dst: &mut [T],
) -> Result<()> {
    let n = crate::size::product("convert_state heads * K * V", &[heads, k_dim, v_dim])?;
    for (name, len) in [("source", src.len()), ("destination", dst.len())] {
        if len < n {
            return Err(Error::StateMismatch(format!(
                "convert_state: {name} holds {len} elements, {heads} heads of {k_dim} x {v_dim} need {n}"
            )));
        }
    }
    let per = k_dim * v_dim;
    if from == to {
        dst[..n].copy_from_slice(&src[..n]);
        return Ok(());
    }
    for h in 0..heads {
        let (s, d) = (&src[h * per..(h + 1) * per], &mut dst[h * per..(h + 1) * per]);
        for k in 0..k_dim {
            for v in 0..v_dim {
                d[to.offset(k_dim, v_dim, k, v)] = s[from.offset(k_dim, v_dim, k, v)];
            }
        }
    }
    Ok(())
}

/// Which of the two conv-state layouts a buffer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvLayoutKind {
    /// `[conv_dim, W-1]` per request (sglang, canonical).
    ChannelsFirst,
    /// `[W-1, conv_dim]` per request.
    ChannelsLast,
}

impl ConvLayoutKind {
    /// Element offset of channel `c`, column `j` (0 = oldest) in one request.
    #[inline(always)]
    pub fn offset(self, conv_dim: usize, cols: usize, c: usize, j: usize) -> usize {
        match self {
            ConvLayoutKind::ChannelsFirst => c * cols + j,
            ConvLayoutKind::ChannelsLast => j * conv_dim + c,
        }
    }
}

/// Converts one or more requests' conv states between conv layouts: `src`
/// and `dst` of one length, a multiple of `conv_dim * cols`; anything else is
/// an error, with `dst` unchanged.
pub fn convert_conv<T: Copy>(
    from: ConvLayoutKind,
    to: ConvLayoutKind,
    conv_dim: usize,
    cols: usize,
    src: &[T],
    dst: &mut [T],
) -> Result<()> {
    let per = crate::size::product("convert_conv conv_dim * cols", &[conv_dim, cols])?;
    if src.len() != dst.len() || !src.len().is_multiple_of(per.max(1)) {
        return Err(Error::StateMismatch(format!(
            "convert_conv: source of {} and destination of {} elements; both must be one multiple of conv_dim {conv_dim} x {cols}",
            src.len(),
            dst.len()
        )));
    }
    if from == to {
        dst.copy_from_slice(src);
        return Ok(());
    }
    for (s, d) in src.chunks_exact(per).zip(dst.chunks_exact_mut(per)) {
        for c in 0..conv_dim {
            for j in 0..cols {
                d[to.offset(conv_dim, cols, c, j)] = s[from.offset(conv_dim, cols, c, j)];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(n: usize) -> Vec<u32> {
        (0..n as u32).collect()
    }

    #[test]
    fn state_round_trip_is_exact_for_odd_sizes() {
        for &(h, k, v) in &[(1, 1, 1), (2, 3, 5), (3, 17, 9), (4, 48, 32), (1, 128, 64)] {
            let src = iota(h * k * v);
            let mut vm = vec![0; src.len()];
            let mut back = vec![0; src.len()];
            convert_state(LayoutKind::KMajor, LayoutKind::VMajor, h, k, v, &src, &mut vm).unwrap();
            convert_state(LayoutKind::VMajor, LayoutKind::KMajor, h, k, v, &vm, &mut back).unwrap();
            assert_eq!(src, back);
            if k > 1 && v > 1 {
                assert_ne!(src, vm, "K != 1 and V != 1 must permute");
            }
            // element (head, k, v) lands where the V-major formula says
            for hh in 0..h {
                for kk in 0..k {
                    for vv in 0..v {
                        assert_eq!(vm[hh * k * v + vv * k + kk], src[hh * k * v + kk * v + vv]);
                    }
                }
            }
        }
    }

    #[test]
    fn k_equals_v_still_transposes() {
        // the "silently wrong when K = V" class: a transpose must not be a no-op
        let src = iota(2 * 4 * 4);
        let mut vm = vec![0; src.len()];
        convert_state(LayoutKind::KMajor, LayoutKind::VMajor, 2, 4, 4, &src, &mut vm).unwrap();
        assert_eq!(vm[1], src[4]);
        assert_ne!(vm, src);
    }

    #[test]
    fn conv_round_trip() {
        for &(c, w) in &[(1, 1), (5, 3), (40, 3), (7, 5)] {
            let src = iota(2 * c * w);
            let mut last = vec![0; src.len()];
            let mut back = vec![0; src.len()];
            convert_conv(ConvLayoutKind::ChannelsFirst, ConvLayoutKind::ChannelsLast, c, w, &src, &mut last).unwrap();
            convert_conv(ConvLayoutKind::ChannelsLast, ConvLayoutKind::ChannelsFirst, c, w, &last, &mut back).unwrap();
            assert_eq!(src, back);
            for ch in 0..c {
                for j in 0..w {
                    assert_eq!(last[j * c + ch], src[ch * w + j]);
                }
            }
        }
    }

    #[test]
    fn short_or_mismatched_buffers_are_errors_and_leave_dst_unchanged() {
        let src = iota(2 * 3 * 4);
        let mut dst = [7u32; 2 * 3 * 4];
        for (heads, k, v, s, d) in
            [(3, 3, 4, &src[..], 24), (2, 3, 4, &src[..23], 24), (2, 3, 4, &src[..], 23), (1, usize::MAX, 2, &src[..], 24)]
        {
            let r = convert_state(LayoutKind::KMajor, LayoutKind::VMajor, heads, k, v, s, &mut dst[..d]);
            assert!(matches!(r, Err(Error::StateMismatch(_) | Error::InvalidConfig(_))), "{heads} {k} {v}: {r:?}");
            assert!(dst.iter().all(|&x| x == 7));
        }
        for (c, w, s, d) in [(3, 4, &src[..], 23), (5, 1, &src[..], 24), (usize::MAX, 2, &src[..], 24)] {
            let r = convert_conv(ConvLayoutKind::ChannelsFirst, ConvLayoutKind::ChannelsLast, c, w, s, &mut dst[..d]);
            assert!(matches!(r, Err(Error::StateMismatch(_) | Error::InvalidConfig(_))), "{c} {w}: {r:?}");
            assert!(dst.iter().all(|&x| x == 7));
        }
    }
}
