//! `brook bench password`: what one login costs: a users-file password check at Brook's rounds
//! and at Mosquitto's, on one core, single-threaded; and what one ACL check costs (every
//! request of every protocol makes one or more when an ACL file is set).

use std::time::Instant;

use serde::Serialize;

use super::{BenchResult, Report};
use brook::auth::PasswordHash;

/// The measured cost of one password check.
#[derive(Debug, Serialize)]
pub struct PasswordReport {
    pub iterations: u32,
    pub checks: u32,
    /// Mean wall time of one check (ms).
    pub check_ms: f64,
    /// Checks per second on one core.
    pub checks_per_sec: f64,
    /// The same for Mosquitto's 101 rounds (ms).
    pub mosquitto_check_ms: f64,
    /// One ACL check (ns): a user matching the second of three rules, a topic pattern with
    /// `%u`, the kind a Kafka produce or fetch makes per topic.
    pub acl_check_ns: f64,
}

impl Report for PasswordReport {
    fn render(&self) -> String {
        format!(
            "password check, PBKDF2-HMAC-SHA512:\n  {} rounds (brook passwd): {:.2} ms per check, {:.0} checks/s per core ({} checks)\n  101 rounds (mosquitto_passwd): {:.3} ms per check\nACL check (3 rules, %u pattern): {:.0} ns\n",
            self.iterations,
            self.check_ms,
            self.checks_per_sec,
            self.checks,
            self.mosquitto_check_ms,
            self.acl_check_ns
        )
    }
}

/// Mean milliseconds of one check of a hash with `iterations` rounds, over `checks` checks.
fn time_checks(iterations: u32, checks: u32) -> BenchResult<f64> {
    let hash = PasswordHash::new(b"correct horse battery staple", iterations)?;
    // One check first, outside the timing (page faults, frequency ramp).
    let _ = hash.verify(b"warm-up");
    let start = Instant::now();
    let mut matched = 0u32;
    for _ in 0..checks {
        matched += u32::from(hash.verify(b"correct horse battery staple"));
    }
    if matched != checks {
        return Err("a check of the right password failed".into());
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0 / f64::from(checks.max(1)))
}

/// Mean nanoseconds of one ACL check.
fn time_acl() -> BenchResult<f64> {
    use brook::auth::{Acl, Op, Who};
    let acl = Acl::parse(
        "[[rule]]\nuser = \"ops\"\nadmin = true\nconsume = [\"*\"]\n\n\
         [[rule]]\nuser = \"sensor-*\"\nproduce = [\"telemetry\", \"in-%u\"]\nconsume = [\"cmd-%u\"]\ngroups = [\"g-%u\"]\n\n\
         [[rule]]\nuser = \"anonymous\"\nsubscribe = [\"public/#\"]\n",
    )?;
    let who = Who {
        user: Some("sensor-17"),
        client_id: "dev17",
    };
    let n = 1_000_000u32;
    let start = Instant::now();
    let mut allowed = 0u32;
    for i in 0..n {
        let topic = if i % 2 == 0 {
            "in-sensor-17"
        } else {
            "telemetry"
        };
        allowed += u32::from(acl.allows(&who, Op::Produce(std::hint::black_box(topic))));
    }
    if allowed != n {
        return Err("an ACL check the rules allow was refused".into());
    }
    Ok(start.elapsed().as_secs_f64() * 1e9 / f64::from(n))
}

pub fn run(iterations: u32, checks: u32) -> BenchResult<PasswordReport> {
    let check_ms = time_checks(iterations, checks)?;
    let acl_check_ns = time_acl()?;
    let mosquitto_check_ms = time_checks(101, checks.saturating_mul(20).max(1))?;
    Ok(PasswordReport {
        iterations,
        checks,
        check_ms,
        checks_per_sec: 1000.0 / check_ms.max(1e-9),
        mosquitto_check_ms,
        acl_check_ns,
    })
}
