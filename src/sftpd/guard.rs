//! The brute-force defender: failed logins per source address within a window earn a ban;
//! each repeat ban doubles, up to a maximum. Addresses in the never-ban networks are exempt.
//! In memory only: a restart forgives (a ban list on disk would be one more thing to
//! corrupt, and an attacker gains one window's worth of guesses per restart of the daemon).

use crate::config::sftp::BanPolicy;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses remembered at most; beyond this, the oldest quiet ones are forgotten (a spray
/// from many addresses must not grow memory without bound).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Default)]
struct Record {
    /// Failure times within the window.
    failures: Vec<Instant>,
    banned_until: Option<Instant>,
    /// How many bans this address earned (the next one lasts `first * 2^bans`).
    bans: u32,
    last_seen: Option<Instant>,
}

/// What [`Guard::failed`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Counted,
    /// The address is now banned for this long.
    Banned(Duration),
}

pub struct Guard {
    policy: BanPolicy,
    by_addr: Mutex<HashMap<IpAddr, Record>>,
}

impl Guard {
    pub fn new(policy: BanPolicy) -> Guard {
        Guard {
            policy,
            by_addr: Mutex::new(HashMap::new()),
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.policy.never_ban.iter().any(|n| n.contains(&ip))
    }

    /// Remaining ban of `ip`, if banned now.
    pub fn banned(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        let until = map.get(&ip)?.banned_until?;
        (until > now).then(|| until - now)
    }

    /// Record a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr) -> Verdict {
        if self.exempt(ip) {
            return Verdict::Counted;
        }
        let now = Instant::now();
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            let window = self.policy.window;
            map.retain(|_, r| {
                r.banned_until.is_some_and(|u| u > now)
                    || r.last_seen.is_some_and(|t| now.duration_since(t) < window)
            });
        }
        let r = map.entry(ip).or_default();
        r.last_seen = Some(now);
        r.failures
            .retain(|t| now.duration_since(*t) < self.policy.window);
        r.failures.push(now);
        if r.failures.len() >= self.policy.failures as usize {
            let factor = 1u32.checked_shl(r.bans.min(30)).unwrap_or(u32::MAX);
            let len = self
                .policy
                .first
                .checked_mul(factor)
                .unwrap_or(self.policy.max)
                .min(self.policy.max);
            r.banned_until = Some(now + len);
            r.bans = r.bans.saturating_add(1);
            r.failures.clear();
            return Verdict::Banned(len);
        }
        Verdict::Counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(failures: u32) -> BanPolicy {
        BanPolicy {
            failures,
            window: Duration::from_secs(60),
            first: Duration::from_secs(10),
            max: Duration::from_secs(25),
            never_ban: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    #[test]
    fn bans_after_failures_and_grows_up_to_the_max() {
        let g = Guard::new(policy(3));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(g.failed(ip), Verdict::Counted);
        assert_eq!(g.failed(ip), Verdict::Counted);
        assert!(g.banned(ip).is_none());
        assert_eq!(g.failed(ip), Verdict::Banned(Duration::from_secs(10)));
        assert!(g.banned(ip).is_some());
        g.failed(ip);
        g.failed(ip);
        assert_eq!(g.failed(ip), Verdict::Banned(Duration::from_secs(20)));
        g.failed(ip);
        g.failed(ip);
        assert_eq!(g.failed(ip), Verdict::Banned(Duration::from_secs(25)));
        // Another address is unaffected.
        assert!(g.banned("192.0.2.2".parse().unwrap()).is_none());
    }

    #[test]
    fn never_ban_networks_are_exempt() {
        let g = Guard::new(policy(1));
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(g.failed(ip), Verdict::Counted);
        assert!(g.banned(ip).is_none());
    }
}
