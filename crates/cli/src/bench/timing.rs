//! Interleaved timing: every ratio the bench prints compares runs made in
//! the same rounds (A B A B ...), so a load spike from another process on a
//! shared machine hits both sides of a ratio instead of one (one chunked-
//! prefill ratio read 1.008x in one run and 1.28x in another when its two
//! sides were timed one after the other).

use std::time::{Duration, Instant};

/// Runs `f(0), f(1), ..., f(n - 1)` once per round, after one warm-up round,
/// for at least `rounds` rounds and then until `min_time` has passed (at most
/// `20 * rounds` rounds); returns each index's best seconds.
pub fn interleaved(n: usize, rounds: usize, min_time: Duration, mut f: impl FnMut(usize)) -> Vec<f64> {
    (0..n).for_each(&mut f);
    let start = Instant::now();
    let mut best = vec![f64::INFINITY; n];
    let mut r = 0;
    while r < rounds.max(1) || (start.elapsed() < min_time && r < 20 * rounds.max(1)) {
        for (i, b) in best.iter_mut().enumerate() {
            let t = Instant::now();
            f(i);
            *b = b.min(t.elapsed().as_secs_f64());
        }
        r += 1;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_and_keeps_each_best() {
        let mut order = Vec::new();
        let secs = interleaved(3, 2, Duration::ZERO, |i| {
            order.push(i);
            std::thread::sleep(Duration::from_millis(2 * (i as u64 + 1)));
        });
        // warm-up round, then two rounds, each A B C
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        assert!(secs[0] >= 0.002 && secs[1] >= 0.004 && secs[2] >= 0.006, "{secs:?}");
        assert!(secs[0] < secs[2]);
    }
}
