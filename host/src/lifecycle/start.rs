//! A generation's start: which workers are forked, and when the next ones
//! are (a few at a time under a generation that serves).

use super::{Effect, Life, Machine, Slot, WorkerState};

impl Machine {
    /// The first effects: fork the first [`Machine::start_at_once`]
    /// workers (and, in the first generation, say so in the status file).
    pub fn start(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.in_charge() {
            effects.push(Effect::WriteStatus);
        }
        self.start_more(&mut effects);
        effects
    }

    /// While the generation starts: forks workers for the slots not
    /// started yet, as long as fewer than `start_at_once` are loading. (A
    /// fork is answered, `Event::Forked`, before any other event: a slot
    /// being forked is never left out of the count.)
    pub(super) fn start_more(&mut self, fx: &mut Vec<Effect>) {
        if !matches!(self.life, Life::Starting { .. }) {
            return;
        }
        let loading = |s: &Slot| {
            matches!(s, Slot::Running(w) if matches!(
                w.state,
                WorkerState::Forked | WorkerState::Loaded { can_hot_reload: true }
            ))
        };
        let mut at_once = self.slots.iter().filter(|s| loading(s)).count();
        while self.next_start < self.slots.len() && at_once < self.start_at_once.max(1) {
            fx.push(Effect::ForkWorker {
                slot: self.next_start,
                head_start: self.inherited,
            });
            self.next_start += 1;
            at_once += 1;
        }
    }
}
