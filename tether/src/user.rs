//! Resolving a session's user and group against the image's `/etc/passwd` and `/etc/group`,
//! with the forms the original accepted: `user`, `uid`, `user:group`, `uid:gid`, `user:gid`,
//! `uid:group`, and an empty spec meaning root.

use std::fs;
use std::path::Path;

/// A resolved identity to run a process as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` membership), without `gid` itself.
    pub groups: Vec<u32>,
    /// Home directory from `/etc/passwd`, `/` when the user has no entry.
    pub home: String,
}

/// User lookup errors; the text is what the user sees in `started`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// the user is not in the image's passwd file
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    /// the group is not in the image's group file
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
}

#[derive(Debug)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `user` and `group` (the session's two config fields) against files under `root`.
pub fn resolve(root: &Path, user: &str, group: &str) -> Result<Identity, UserError> {
    let passwd = parse_passwd(&fs::read_to_string(root.join("etc/passwd")).unwrap_or_default());
    let groups = parse_group(&fs::read_to_string(root.join("etc/group")).unwrap_or_default());
    resolve_with(&passwd, &groups, user, group)
}

fn resolve_with(
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
    user: &str,
    group: &str,
) -> Result<Identity, UserError> {
    // The original appended the group field as `user:group`.
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, if group.is_empty() { g } else { group }),
        None => (user, group),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|p| p.uid == uid),
        Err(_) => Some(
            passwd
                .iter()
                .find(|p| p.name == user_part)
                .ok_or_else(|| UserError::NoUser(user_part.into()))?,
        ),
    };
    let uid = match (entry, user_part.parse::<u32>()) {
        (_, Ok(uid)) => uid,
        (Some(e), Err(_)) => e.uid,
        (None, Err(_)) => return Err(UserError::NoUser(user_part.into())),
    };
    let gid = if group_part.is_empty() {
        entry.map(|e| e.gid).unwrap_or(0)
    } else if let Ok(gid) = group_part.parse::<u32>() {
        gid
    } else {
        groups
            .iter()
            .find(|g| g.name == group_part)
            .map(|g| g.gid)
            .ok_or_else(|| UserError::NoGroup(group_part.into()))?
    };
    let supplementary = match entry {
        Some(e) => {
            let mut v: Vec<u32> = groups
                .iter()
                .filter(|g| g.members.contains(&e.name))
                .map(|g| g.gid)
                .filter(|g| *g != gid)
                .collect();
            v.dedup();
            v
        }
        None => Vec::new(),
    };
    let home = entry
        .map(|e| e.home.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(Identity {
        uid,
        gid,
        groups: supplementary,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nuser:x:1000:1000:User:/home/user:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\nuser:x:1000:\nwheel:x:10:user,other\naudio:x:29:user\n";

    fn r(u: &str, g: &str) -> Result<Identity, UserError> {
        resolve_with(&parse_passwd(PASSWD), &parse_group(GROUP), u, g)
    }

    #[test]
    fn empty_means_root() {
        assert_eq!(
            r("", "").unwrap(),
            Identity {
                uid: 0,
                gid: 0,
                groups: vec![],
                home: "/root".into()
            }
        );
    }

    #[test]
    fn name_gives_primary_and_supplementary_groups() {
        assert_eq!(
            r("user", "").unwrap(),
            Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![10, 29],
                home: "/home/user".into()
            }
        );
    }

    #[test]
    fn all_forms() {
        assert_eq!(r("1000", "").unwrap().gid, 1000);
        assert_eq!(r("user:wheel", "").unwrap().gid, 10);
        assert_eq!(r("user:29", "").unwrap().gid, 29);
        assert_eq!(r("1000:wheel", "").unwrap().gid, 10);
        assert_eq!(r("user", "audio").unwrap().gid, 29);
        let anon = r("4242:4343", "").unwrap();
        assert_eq!((anon.uid, anon.gid, anon.home.as_str()), (4242, 4343, "/"));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(r("nobody", ""), Err(UserError::NoUser("nobody".into())));
        assert_eq!(
            r("user:nogroup", ""),
            Err(UserError::NoGroup("nogroup".into()))
        );
        assert_eq!(
            r("nobody", "").unwrap_err().to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
    }
}
