//! Machine ceilings measured by the bench itself, on its thread count: f32
//! GEMM through the same `gemm` crate the extend uses, and in-place
//! read-modify-write streaming over more memory than the L3 — what a decode
//! does to its state (a copy's ceiling measures something else: separate
//! source and destination streams, which the decode never has).

use super::{thread_pool, Lcg};
use rayon::prelude::*;

/// An `n x n x n` f32 GEMM on a thread pool of its own.
pub struct GemmBench {
    n: usize,
    threads: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    pool: rayon::ThreadPool,
}

impl GemmBench {
    /// Random `n x n` operands, `threads` threads.
    pub fn new(threads: usize, n: usize) -> Self {
        let mut r = Lcg(7);
        let (a, b) = (r.vec(n * n, -1.0, 1.0), r.vec(n * n, -1.0, 1.0));
        GemmBench { n, threads, a, b, c: vec![0.0; n * n], pool: thread_pool(threads) }
    }

    /// FLOP of one product (`2 n^3`).
    pub fn flop(&self) -> f64 {
        2.0 * (self.n as f64).powi(3)
    }

    /// Matrix size.
    pub fn n(&self) -> usize {
        self.n
    }

    /// One product.
    pub fn run(&mut self) {
        let n = self.n;
        let par = if self.threads > 1 { gemm::Parallelism::Rayon(self.threads) } else { gemm::Parallelism::None };
        let (a, b, c) = (&self.a, &self.b, &mut self.c);
        self.pool.install(|| {
            // SAFETY: three distinct n x n row-major buffers.
            unsafe {
                gemm::gemm(
                    n,
                    n,
                    n,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    n as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            }
        });
    }
}

/// In-place streaming over a buffer: every f32 read, updated
/// (`x = 0.75 x + 0.25`, one multiply-add) and written back where it lies, in
/// contiguous pieces split over the threads, as a decode updates its states.
pub struct RmwBench {
    buf: Vec<f32>,
    piece: usize,
    pool: rayon::ThreadPool,
}

impl RmwBench {
    /// `bytes` of f32 (faulted in), `threads` threads.
    pub fn new(threads: usize, bytes: usize) -> Self {
        let n = (bytes / 4).max(1);
        let piece = n.div_ceil(threads.max(1) * 64).max(1 << 14);
        RmwBench { buf: vec![1.0; n], piece, pool: thread_pool(threads) }
    }

    /// Bytes moved per run (read + write).
    pub fn bytes_moved(&self) -> f64 {
        8.0 * self.buf.len() as f64
    }

    /// One pass.
    pub fn run(&mut self) {
        let (buf, piece) = (&mut self.buf, self.piece);
        self.pool.install(|| buf.par_chunks_mut(piece).for_each(|c| c.iter_mut().for_each(|x| *x = *x * 0.75 + 0.25)));
        std::hint::black_box(&self.buf);
    }
}

/// A large copy (read + write bytes), kept for comparison with earlier tables.
pub struct CopyBench {
    src: Vec<u8>,
    dst: Vec<u8>,
    piece: usize,
    pool: rayon::ThreadPool,
}

impl CopyBench {
    /// `bytes` copied per run on `threads` threads.
    pub fn new(threads: usize, bytes: usize) -> Self {
        let piece = bytes.div_ceil(threads.max(1) * 8).max(1 << 16);
        CopyBench { src: vec![1u8; bytes], dst: vec![0u8; bytes], piece, pool: thread_pool(threads) }
    }

    /// Bytes moved per run (read + write).
    pub fn bytes_moved(&self) -> f64 {
        2.0 * self.src.len() as f64
    }

    /// One copy.
    pub fn run(&mut self) {
        let (src, dst, piece) = (&self.src, &mut self.dst, self.piece);
        self.pool.install(|| dst.par_chunks_mut(piece).zip(src.par_chunks(piece)).for_each(|(d, s)| d.copy_from_slice(s)));
        std::hint::black_box(&self.dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmw_updates_every_element_in_place() {
        let mut b = RmwBench::new(2, 1 << 20);
        b.run();
        b.run();
        // 1 -> 1 (the fixed point) would not tell; start elsewhere
        b.buf.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        b.run();
        assert!(b.buf.iter().enumerate().all(|(i, &x)| x == i as f32 * 0.75 + 0.25));
        assert_eq!(b.bytes_moved(), 8.0 * (1 << 18) as f64);
    }

    #[test]
    fn gemm_bench_multiplies() {
        let mut g = GemmBench::new(1, 8);
        g.run();
        let want: f32 = (0..8).map(|k| g.a[k] * g.b[k * 8]).sum();
        assert!((g.c[0] - want).abs() < 1e-5);
    }
}
