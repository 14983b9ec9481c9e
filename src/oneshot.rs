//! A value handed from one thread to another exactly once: the writer's answer to a change that
//! a request waits for ([`crate::db::Writer::exec`]), the response made after a commit for a
//! request answered where it arrived ([`crate::server::respond`]).
//!
//! Not a `crossbeam_channel::bounded(1)`: its `recv` spins and then calls `sched_yield` a few
//! times before it sleeps, and a request waits about a millisecond for a commit, so every wait
//! paid for those yields (a tenth of the server's profile samples on the create probe, on two
//! busy cores). [`Slot::wait`] sleeps on a futex straight away.

use std::sync::{Arc, Condvar, Mutex};

/// Where the value arrives.
pub struct Slot<T> {
    /// `Some` once the sender is done: the value, or `None` when the [`Reply`] was dropped unsent.
    value: Mutex<Option<Option<T>>>,
    ready: Condvar,
}

impl<T> Slot<T> {
    fn put(&self, value: Option<T>) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        self.ready.notify_one();
    }

    /// Waits for the value; `None` when the sender dropped its [`Reply`] unsent.
    pub fn wait(&self) -> Option<T> {
        let mut slot = self.value.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(value) = slot.take() {
                return value;
            }
            slot = self.ready.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The sending end of a [`Slot`]. Dropping it unsent wakes the waiter with nothing.
pub struct Reply<T> {
    slot: Arc<Slot<T>>,
    sent: bool,
}

impl<T> Reply<T> {
    pub fn send(mut self, value: T) {
        self.sent = true;
        self.slot.put(Some(value));
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if !self.sent {
            self.slot.put(None);
        }
    }
}

/// A sending end and the slot it fills.
pub fn pair<T>() -> (Reply<T>, Arc<Slot<T>>) {
    let slot = Arc::new(Slot {
        value: Mutex::new(None),
        ready: Condvar::new(),
    });
    let reply = Reply {
        slot: slot.clone(),
        sent: false,
    };
    (reply, slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A waiter wakes with the value sent from another thread, or with nothing when the sending
    /// end is dropped unsent (the writer stopped); either may come before or after the wait.
    #[test]
    fn a_reply_wakes_its_waiter_with_the_value_or_with_nothing_when_dropped() {
        for delay in [Duration::ZERO, Duration::from_millis(20)] {
            let (reply, slot) = pair::<i64>();
            let sender = std::thread::spawn(move || {
                std::thread::sleep(delay);
                reply.send(7);
            });
            assert!(matches!(slot.wait(), Some(7)));
            sender.join().unwrap();

            let (reply, slot) = pair::<i64>();
            let dropper = std::thread::spawn(move || {
                std::thread::sleep(delay);
                drop(reply);
            });
            assert!(slot.wait().is_none());
            dropper.join().unwrap();
        }
    }
}
