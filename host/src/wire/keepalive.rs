//! Server pings and the idle timeout of one connection.
//!
//! Every frame received counts as a sign of life; one timer per connection
//! checks, a few times per interval, whether a ping or the idle close is
//! due. Neither costs a frame anything but a flag: a frame marks the
//! connection heard, the next check takes its own time as the time of
//! the last frame, and the timer, once armed, is looked at again only when
//! it has fired (the connection's task is woken for every frame, and
//! polling a timer each time is not free).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::config::Limits;

/// The keepalive timer of one connection.
pub struct Keepalive {
    ping: Option<Duration>,
    idle: Option<Duration>,
    /// Time between two checks.
    period: Duration,
    /// The next check.
    check: Pin<Box<Sleep>>,
    /// `check` is registered with the connection's task (polled outside
    /// tokio's task budget, so a poll always registers it): polling it
    /// again before it fires would tell nothing new.
    armed: bool,
    /// Something arrived since the last check.
    heard: bool,
    /// The check at which the peer was last heard (or the start).
    last_received: Instant,
    last_ping: Instant,
}

/// What a keepalive check found due.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Time to ping the quiet peer.
    Ping,
    /// The peer has been quiet for the idle timeout.
    IdleClose,
}

impl Keepalive {
    pub fn new(limits: &Limits) -> Keepalive {
        let (ping, idle) = (limits.ping_interval(), limits.idle_timeout());
        // Checks at half the shorter period: a ping goes out at most that
        // much late. A frame counts from the check after it, so an idle
        // client is closed at most a period late when the idle timeout is
        // a multiple of the period (the defaults, 30 s and 75 s, are), and
        // at most two otherwise.
        let period = match (ping, idle) {
            (Some(p), Some(i)) => p.min(i) / 2,
            (Some(d), None) | (None, Some(d)) => d / 2,
            (None, None) => Duration::from_secs(3600),
        }
        .max(Duration::from_millis(1));
        let now = Instant::now();
        Keepalive {
            ping,
            idle,
            period,
            check: Box::pin(tokio::time::sleep_until(now + period)),
            armed: false,
            heard: false,
            last_received: now,
            last_ping: now,
        }
    }

    /// Whether pings or the idle timeout are configured at all.
    pub fn is_on(&self) -> bool {
        self.ping.is_some() || self.idle.is_some()
    }

    /// Something arrived from the peer (or the peer is not to blame for
    /// the quiet).
    pub fn received(&mut self) {
        self.heard = true;
    }

    /// Ready at the next check at which something is due.
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Due> {
        loop {
            if self.armed && !self.check.is_elapsed() {
                return Poll::Pending;
            }
            // Unconstrained: with the task's budget spent, tokio would
            // answer `Pending` without registering the timer, and a check
            // marked armed would then never wake the task.
            if Pin::new(&mut tokio::task::unconstrained(self.check.as_mut()))
                .poll(cx)
                .is_pending()
            {
                self.armed = true;
                return Poll::Pending;
            }
            self.armed = false;
            let now = self.check.deadline();
            // The next check a period from now: a late check (a busy
            // thread) does not bring the ones after it closer.
            let next = Instant::now().max(now) + self.period;
            self.check.as_mut().reset(next);
            if std::mem::take(&mut self.heard) {
                self.last_received = now;
            }
            let quiet = now.saturating_duration_since(self.last_received);
            if self.idle.is_some_and(|idle| quiet >= idle) {
                return Poll::Ready(Due::IdleClose);
            }
            if let Some(ping) = self.ping
                && quiet >= ping
                && now.saturating_duration_since(self.last_ping) >= ping
            {
                self.last_ping = now;
                return Poll::Ready(Due::Ping);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ping_ms: u64, idle_ms: u64) -> Limits {
        Limits {
            ping_interval_ms: ping_ms,
            idle_timeout_ms: idle_ms,
            ..Limits::default()
        }
    }

    async fn next_due(keepalive: &mut Keepalive) -> Due {
        std::future::poll_fn(|cx| keepalive.poll_due(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_peer_is_pinged_then_closed() {
        let start = Instant::now();
        let mut keepalive = Keepalive::new(&limits(1_000, 3_000));
        assert_eq!(next_due(&mut keepalive).await, Due::Ping);
        let first_ping = start.elapsed();
        assert!(first_ping >= Duration::from_millis(1_000), "{first_ping:?}");
        assert!(first_ping <= Duration::from_millis(1_500), "{first_ping:?}");
        assert_eq!(next_due(&mut keepalive).await, Due::Ping);
        assert_eq!(next_due(&mut keepalive).await, Due::IdleClose);
        let closed = start.elapsed();
        assert!(closed >= Duration::from_millis(3_000), "{closed:?}");
        assert!(closed <= Duration::from_millis(3_500), "{closed:?}");
    }

    /// A busy connection's task may have spent its budget when it polls
    /// the keepalive; the check must still be registered and fire.
    #[tokio::test(start_paused = true)]
    async fn a_check_polled_with_the_budget_spent_still_fires() {
        let mut keepalive = Keepalive::new(&limits(1_000, 0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..1_000 {
            tx.send(()).unwrap();
        }
        let mut spent = false;
        let due = std::future::poll_fn(|cx| {
            if !spent {
                // Ready messages are refused once the budget is gone.
                while rx.poll_recv(cx).is_ready() {}
                spent = true;
            }
            keepalive.poll_due(cx)
        });
        let due = tokio::time::timeout(Duration::from_secs(60), due).await;
        assert_eq!(due, Ok(Due::Ping));
    }

    #[tokio::test(start_paused = true)]
    async fn what_arrives_puts_off_the_ping_and_the_idle_close() {
        let start = Instant::now();
        let mut keepalive = Keepalive::new(&limits(0, 2_000));
        assert!(keepalive.is_on());
        tokio::time::sleep(Duration::from_millis(1_900)).await;
        keepalive.received();
        assert_eq!(next_due(&mut keepalive).await, Due::IdleClose);
        assert!(start.elapsed() >= Duration::from_millis(3_900));
        assert!(!Keepalive::new(&limits(0, 0)).is_on());
    }
}
