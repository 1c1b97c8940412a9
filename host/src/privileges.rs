//! `--user` / `--group`: a host started as root binds its listeners and
//! opens the pid file, then becomes that user (and group, with the user's
//! supplementary groups) for good, before any supervisor or worker exists.

use std::ffi::CString;

use nix::unistd::{getuid, initgroups, setgid, setgroups, setuid, Gid, Group, Uid, User};

use crate::error::Error;

fn refuse(what: String) -> Error {
    Error::Control(what)
}

/// Drops to `user` (and `group`, by default the user's own) for good.
pub fn drop_to(user: Option<&str>, group: Option<&str>) -> Result<(), Error> {
    if user.is_none() && group.is_none() {
        return Ok(());
    }
    if !getuid().is_root() {
        return Err(refuse(
            "--user/--group: only a host started as root can change user; start it as root, or drop the flags".into(),
        ));
    }
    let user = match user {
        Some(name) => Some(
            User::from_name(name)
                .map_err(|e| refuse(format!("--user {name}: cannot look it up: {e}")))?
                .ok_or_else(|| refuse(format!("--user {name}: no such user (see /etc/passwd)")))?,
        ),
        None => None,
    };
    let gid: Gid = match (group, &user) {
        (Some(name), _) => {
            Group::from_name(name)
                .map_err(|e| refuse(format!("--group {name}: cannot look it up: {e}")))?
                .ok_or_else(|| refuse(format!("--group {name}: no such group (see /etc/group)")))?
                .gid
        }
        (None, Some(u)) => u.gid,
        (None, None) => unreachable!("checked above"),
    };
    // Supplementary groups first, while still root: the user's own, or none.
    match &user {
        Some(u) => {
            let name = CString::new(u.name.as_str())
                .map_err(|_| refuse(format!("--user {}: the name has a NUL byte", u.name)))?;
            initgroups(&name, gid)
        }
        None => setgroups(&[gid]),
    }
    .map_err(|e| refuse(format!("cannot set the supplementary groups: {e}")))?;
    setgid(gid).map_err(|e| refuse(format!("cannot change group to {gid}: {e}")))?;
    if let Some(u) = &user {
        setuid(u.uid).map_err(|e| refuse(format!("--user {}: cannot change user: {e}", u.name)))?;
        // For good: root cannot be regained.
        if !u.uid.is_root() && setuid(Uid::from_raw(0)).is_ok() {
            return Err(refuse(format!("--user {}: root could be regained", u.name)));
        }
    }
    tracing::info!("running as uid {} gid {}", getuid(), nix::unistd::getgid());
    Ok(())
}
