//! Access rules: who may publish and subscribe over MQTT, and produce, consume and administer
//! log topics over the native protocol.
//!
//! The ACL file is TOML, a list of `[[rule]]`s; a client may do what any rule for its user
//! allows, and nothing else (deny by default once a file is configured):
//!
//! ```toml
//! [[rule]]
//! user = "sensor-*"              # user name pattern (`*`: any run); "anonymous": no login
//! publish = ["sensors/%u/#"]     # MQTT topic filters it may publish to
//! subscribe = ["commands/%c/#"]  # MQTT filters; a subscription must lie inside one
//! produce = ["telemetry"]        # log topics (names or `*` patterns)
//! consume = ["telemetry"]        # fetch, offsets, describe
//! groups = ["dashboard-%u"]      # consumer groups it may join, commit and fetch offsets for
//! admin = false                  # create and delete topics, list and describe groups
//! ```
//!
//! A topic is visible to a client (in topic listings: native, Kafka Metadata) when it may
//! produce to it or consume from it, or is an admin. Reading a group's offsets, joining it or
//! committing to it needs both the group (`groups`) and `consume` on each of its topics, on
//! every protocol.
//!
//! `%u` stands for the user name and `%c` for the client id. A name that holds a character
//! with a meaning in the pattern (`/ + # *`) matches no pattern that uses it, so a client
//! cannot widen its own rule by choosing its id. `user = "*"` matches every logged-in user,
//! never an anonymous client.

use std::path::Path;

use serde::Deserialize;

use super::{AuthError, Malformed};
use crate::topic_filter::{self as topic, glob};

/// What a client asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// MQTT PUBLISH (and a will) to this topic name.
    Publish(&'a str),
    /// MQTT SUBSCRIBE to this filter (the part after `$share/GROUP/`).
    Subscribe(&'a str),
    /// Append to this log topic.
    Produce(&'a str),
    /// Read this log topic: fetch, offsets, describe, join a group over it, commit.
    Consume(&'a str),
    /// Join, commit to, fetch the offsets of, heartbeat in or leave this consumer group.
    Group(&'a str),
    /// See that this log topic exists (listings, metadata): produce, consume or admin.
    Describe(&'a str),
    /// Create or delete topics, list and describe groups.
    Admin,
}

/// What the ACL refused, for the peer's error message and the log ("produce \"t\"").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{verb}{}", on.as_ref().map(|n| format!(" {n:?}")).unwrap_or_default())]
pub struct Denied {
    pub verb: &'static str,
    /// The topic, filter or group; `None` for `admin`.
    pub on: Option<String>,
}

impl Op<'_> {
    /// The refusal of this operation.
    pub fn denied(&self) -> Denied {
        let on = match self {
            Op::Publish(n)
            | Op::Subscribe(n)
            | Op::Produce(n)
            | Op::Consume(n)
            | Op::Group(n)
            | Op::Describe(n) => Some((*n).to_string()),
            Op::Admin => None,
        };
        Denied {
            verb: self.verb(),
            on,
        }
    }

    /// The action's name, for logs and errors.
    pub fn verb(&self) -> &'static str {
        match self {
            Op::Publish(_) => "publish",
            Op::Subscribe(_) => "subscribe",
            Op::Produce(_) => "produce",
            Op::Consume(_) => "consume",
            Op::Group(_) => "use group",
            Op::Describe(_) => "describe",
            Op::Admin => "admin",
        }
    }
}

/// Who asks: a user name (None: anonymous) and a client id.
#[derive(Clone, Copy, Debug)]
pub struct Who<'a> {
    pub user: Option<&'a str>,
    pub client_id: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    user: String,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    produce: Vec<String>,
    #[serde(default)]
    consume: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    rule: Vec<Rule>,
}

/// The rules of an ACL file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    rules: Vec<Rule>,
}

/// Substitutes `%u` and `%c`; `None` when the pattern uses a value that is absent or holds a
/// character from `special`.
fn substitute(pattern: &str, who: &Who<'_>, special: &[char]) -> Option<String> {
    let mut out = pattern.to_string();
    for (mark, value) in [("%u", who.user), ("%c", Some(who.client_id))] {
        if out.contains(mark) {
            let v = value?;
            if v.is_empty() || v.contains(special) {
                return None;
            }
            out = out.replace(mark, v);
        }
    }
    Some(out)
}

/// Whether every topic `inner` matches is matched by `outer` (both valid filters).
pub fn covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && outer.starts_with(['+', '#']) {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Acl {
    /// Parses an ACL file's text; errors name the rule and key.
    pub fn parse(text: &str) -> Result<Acl, Malformed> {
        let file: AclFile = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        for (i, r) in file.rule.iter().enumerate() {
            if r.user.is_empty() {
                return Err(Malformed(format!("rule[{i}].user: must not be empty")));
            }
            let sample = Who {
                user: Some("u"),
                client_id: "c",
            };
            for (key, list) in [("publish", &r.publish), ("subscribe", &r.subscribe)] {
                for f in list {
                    let f2 = substitute(f, &sample, &[]).unwrap_or_default();
                    topic::validate_filter(&f2).map_err(|e| {
                        format!("rule[{i}].{key}: {f:?} is not an MQTT filter: {e}")
                    })?;
                }
            }
            for (key, list) in [
                ("produce", &r.produce),
                ("consume", &r.consume),
                ("groups", &r.groups),
            ] {
                for p in list {
                    if p.is_empty() {
                        return Err(Malformed(format!("rule[{i}].{key}: empty topic pattern")));
                    }
                }
            }
        }
        Ok(Acl { rules: file.rule })
    }

    /// Reads an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            what: "auth.acl_file",
            path: path.to_path_buf(),
            source,
        })?;
        Acl::parse(&text).map_err(|reason| AuthError::Content {
            what: "auth.acl_file",
            path: path.to_path_buf(),
            reason,
        })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `who` may do `op`.
    pub fn allows(&self, who: &Who<'_>, op: Op<'_>) -> bool {
        self.rules
            .iter()
            .filter(|r| match who.user {
                None => r.user == "anonymous",
                Some(u) => r.user != "anonymous" && glob(&r.user, u),
            })
            .any(|r| match op {
                Op::Publish(t) => r.publish.iter().any(|f| {
                    substitute(f, who, &['/', '+', '#']).is_some_and(|f| topic::matches(&f, t))
                }),
                Op::Subscribe(s) => r
                    .subscribe
                    .iter()
                    .any(|f| substitute(f, who, &['/', '+', '#']).is_some_and(|f| covers(&f, s))),
                Op::Produce(t) => r
                    .produce
                    .iter()
                    .any(|p| substitute(p, who, &['*']).is_some_and(|p| glob(&p, t))),
                Op::Consume(t) => r
                    .consume
                    .iter()
                    .any(|p| substitute(p, who, &['*']).is_some_and(|p| glob(&p, t))),
                Op::Group(g) => r
                    .groups
                    .iter()
                    .any(|p| substitute(p, who, &['*']).is_some_and(|p| glob(&p, g))),
                Op::Describe(t) => {
                    r.admin
                        || r.produce
                            .iter()
                            .chain(&r.consume)
                            .any(|p| substitute(p, who, &['*']).is_some_and(|p| glob(&p, t)))
                }
                Op::Admin => r.admin,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who<'a>(user: Option<&'a str>, client_id: &'a str) -> Who<'a> {
        Who { user, client_id }
    }

    #[test]
    fn coverage_of_filters() {
        assert!(covers("#", "a/b"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/+", "a/b/c"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/+/c", "a/#"));
        assert!(!covers("a/b/#", "a/#"));
        assert!(covers("a/b", "a/b"));
        assert!(!covers("a/b", "a/b/c"));
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/x"));
    }

    const RULES: &str = r#"
[[rule]]
user = "sensor-*"
publish = ["sensors/%u/#"]
subscribe = ["commands/%c/#", "public/+"]
produce = ["telemetry"]
consume = ["cmd-*"]
groups = ["g-%u"]

[[rule]]
user = "ops"
admin = true
consume = ["*"]

[[rule]]
user = "anonymous"
subscribe = ["public/#"]
"#;

    #[test]
    fn rules_allow_what_they_name_and_nothing_else() {
        let acl = Acl::parse(RULES).unwrap();
        let s = who(Some("sensor-1"), "dev1");
        assert!(acl.allows(&s, Op::Publish("sensors/sensor-1/temp")));
        assert!(!acl.allows(&s, Op::Publish("sensors/sensor-2/temp")));
        assert!(acl.allows(&s, Op::Subscribe("commands/dev1/#")));
        assert!(acl.allows(&s, Op::Subscribe("public/x")));
        // Only partly inside a rule: refused.
        assert!(!acl.allows(&s, Op::Subscribe("public/#")));
        assert!(!acl.allows(&s, Op::Subscribe("commands/#")));
        assert!(!acl.allows(&s, Op::Subscribe("commands/+/x")));
        assert!(acl.allows(&s, Op::Produce("telemetry")));
        assert!(!acl.allows(&s, Op::Produce("telemetry2")));
        assert!(acl.allows(&s, Op::Consume("cmd-a")));
        assert!(!acl.allows(&s, Op::Admin));
        assert!(acl.allows(&s, Op::Group("g-sensor-1")));
        assert!(!acl.allows(&s, Op::Group("g-sensor-2")));
        assert!(acl.allows(&s, Op::Describe("telemetry")));
        assert!(acl.allows(&s, Op::Describe("cmd-x")));
        assert!(!acl.allows(&s, Op::Describe("secret")));
        let ops = who(Some("ops"), "x");
        assert!(acl.allows(&ops, Op::Admin));
        assert!(acl.allows(&ops, Op::Consume("anything")));
        assert!(!acl.allows(&ops, Op::Produce("anything")));
        assert!(acl.allows(&ops, Op::Describe("anything")));
        assert!(!acl.allows(&ops, Op::Group("any")));
        let anon = who(None, "x");
        assert!(acl.allows(&anon, Op::Subscribe("public/#")));
        assert!(!acl.allows(&anon, Op::Publish("public/a")));
        // A logged-in user named "anonymous" is not the anonymous client.
        assert!(!acl.allows(&who(Some("anonymous"), "x"), Op::Subscribe("public/a")));
        // An unknown user gets nothing.
        assert!(!acl.allows(&who(Some("guest"), "x"), Op::Subscribe("public/a")));
    }

    #[test]
    fn names_cannot_widen_their_own_rule() {
        let acl = Acl::parse(RULES).unwrap();
        assert!(!acl.allows(&who(Some("sensor-1"), "#"), Op::Subscribe("commands/#")));
        assert!(!acl.allows(&who(Some("sensor-1"), "+"), Op::Subscribe("commands/+/#")));
        assert!(!acl.allows(
            &who(Some("sensor-a/b"), "c"),
            Op::Publish("sensors/sensor-a/b/x")
        ));
        let acl = Acl::parse("[[rule]]\nuser = \"*\"\nproduce = [\"in-%u\"]\n").unwrap();
        assert!(acl.allows(&who(Some("bob"), "c"), Op::Produce("in-bob")));
        assert!(!acl.allows(&who(Some("*"), "c"), Op::Produce("in-bob")));
        assert!(!acl.allows(&who(None, "c"), Op::Produce("in-")));
    }

    #[test]
    fn bad_files_name_the_rule_and_key() {
        let e = Acl::parse("[[rule]]\nuser = \"a\"\npublish = [\"a/#/b\"]\n").unwrap_err();
        assert!(e.0.contains("rule[0].publish"), "{e}");
        let e = Acl::parse("[[rule]]\nuser = \"\"\n").unwrap_err();
        assert!(e.0.contains("rule[0].user"), "{e}");
        let e = Acl::parse("[[rule]]\nuser = \"a\"\npublsh = [\"x\"]\n").unwrap_err();
        assert!(e.0.contains("publsh"), "{e}");
        let e = Acl::parse("[[rule]]\npublish = [\"x\"]\n").unwrap_err();
        assert!(e.0.contains("user"), "{e}");
        assert!(Acl::parse("").unwrap().is_empty());
    }
}
