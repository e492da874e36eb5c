//! A host's own threads lent to a call: an application that keeps its cores
//! busy with a thread team of its own (torch's OpenMP intra-op threads) can
//! hand that team to the CPU dispatcher
//! ([`crate::CpuDispatcher::with_host_team`]), and its decode, extend and conv
//! calls run their tasks on it, both those that would go to the worker pool
//! and those that would run on the calling thread alone
//! ([`crate::CpuDispatcher::with_inline_decode`]).
//!
//! Why: torch's OpenMP workers spin for a while after every operation, so a
//! worker of deltanet's own pool shares a core with a spinning thread, is
//! preempted mid-task and the caller waits for it at the join; that is why
//! small calls ran on the calling thread. But the spinning workers are waiting
//! for exactly this: work handed to their team starts on them at once, with
//! no thread woken and no core shared. A decode that reads its state from
//! memory then has every core's outstanding misses, not one core's.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Threads a host application already runs, lent to run one call's tasks.
pub trait HostTeam: Send + Sync {
    /// Runs `body(i, n)` once on each of the `n` threads of a team, the
    /// calling thread among them (`i` in `0..n`), and returns when every one
    /// has returned. A panic in `body` is re-raised on the calling thread
    /// after the team is done; it must never unwind into the host's code.
    fn run(&self, body: &(dyn Fn(usize, usize) + Sync));
}

/// Runs `task(i)` for every `i` in `0..tasks`: on `team` when there is one
/// and more than one task (thread `t` of `n` takes the contiguous share
/// `tasks * t / n .. tasks * (t + 1) / n`, in order), else in order on the
/// calling thread. Each task runs once either way, so the results are the
/// same bits.
pub(crate) fn run_tasks(team: Option<&dyn HostTeam>, tasks: usize, task: impl Fn(usize) + Sync) {
    match team {
        Some(team) if tasks > 1 => team.run(&|t, n| (tasks * t / n.max(1)..tasks * (t + 1) / n.max(1)).for_each(&task)),
        _ => (0..tasks).for_each(task),
    }
}

/// Runs `task(i)` for every `i` in `0..tasks` on `team`, each thread taking
/// the next task from a shared counter until none is left, so tasks of unequal
/// cost (a prefill's sequences) balance out. Each task runs once, so the
/// results are the same bits in any order.
pub(crate) fn run_tasks_dynamic(team: &dyn HostTeam, tasks: usize, task: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    team.run(&|_, _| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= tasks {
            break;
        }
        task(i)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A team of `n` scoped threads (the caller as thread 0).
    struct Scoped(usize);

    impl HostTeam for Scoped {
        fn run(&self, body: &(dyn Fn(usize, usize) + Sync)) {
            std::thread::scope(|s| {
                for t in 1..self.0 {
                    s.spawn(move || body(t, self.0));
                }
                body(0, self.0);
            });
        }
    }

    /// `run(n, tasks, f)` runs `f` once per task for teams of 1 to 5 threads.
    fn check_every_task_once(name: &str, run: impl Fn(usize, usize, &(dyn Fn(usize) + Sync))) {
        for n in 1..=5 {
            for tasks in [0, 1, 2, 3, 7, 64] {
                let seen: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                run(n, tasks, &|i| {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{name}: team {n}, {tasks} tasks");
            }
        }
    }

    #[test]
    fn every_task_runs_once_on_any_team_size() {
        check_every_task_once("contiguous", |n, tasks, f| run_tasks(Some(&Scoped(n)), tasks, f));
        check_every_task_once("dynamic", |n, tasks, f| run_tasks_dynamic(&Scoped(n), tasks, f));
        let seen = AtomicUsize::new(0);
        run_tasks(None, 9, |_| {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(seen.load(Ordering::Relaxed), 9);
    }
}
