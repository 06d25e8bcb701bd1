//! Paused accounts (`pauses`): dispatch of an agent account stopped by its
//! usage or rate limit until a reset time (issue 16).

use crate::sql::{params, OptionalExtension};
use serde::Serialize;

use super::{Db, Tx};

/// One paused account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// The role's agent (its `[agents.<role>]` key, or `default`), or the
    /// `account` several roles share.
    pub account: String,
    /// `usage` or `rate`.
    pub kind: String,
    /// The CLI's words.
    pub reason: String,
    /// When this pause began (unix ms); a pause extended by another limit
    /// keeps its start.
    pub since_ms: i64,
    /// No job of the account is claimed before this (unix ms).
    pub until_ms: i64,
    /// Limits hit since the account's last clean run (the backoff's
    /// exponent).
    pub strikes: i64,
}

impl Pause {
    /// Whether the pause holds at `now_ms` (wall clock): `until_ms` is
    /// ahead, and the pause did not begin "after now" — one that did began
    /// before the clock went back (`clock::set_in_the_future`) and counts
    /// as over, so a clock set back never stretches a pause by the jump.
    pub fn holds_at(&self, now_ms: i64) -> bool {
        self.until_ms > now_ms && !crate::clock::set_in_the_future(self.since_ms, now_ms)
    }
}

fn pause_row(r: &crate::sql::Row) -> crate::sql::Result<Pause> {
    Ok(Pause {
        account: r.get(0)?,
        kind: r.get(1)?,
        reason: r.get(2)?,
        since_ms: r.get(3)?,
        until_ms: r.get(4)?,
        strikes: r.get(5)?,
    })
}

const COLS: &str = "account, kind, reason, since_ms, until_ms, strikes";

impl Db {
    /// Every pause row (ended ones too, until a clean run clears them),
    /// by account.
    pub fn pauses(&self) -> anyhow::Result<Vec<Pause>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLS} FROM pauses ORDER BY account"))?;
        let rows = stmt.query_map([], pause_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The pause of `account`, if it has a row.
    pub fn pause(&self, account: &str) -> anyhow::Result<Option<Pause>> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {COLS} FROM pauses WHERE account=?1"))?
            .query_row([account], pause_row)
            .optional()?)
    }

    /// Accounts paused at `now_ms` ([`Pause::holds_at`]).
    pub fn paused_accounts(&self, now_ms: i64) -> anyhow::Result<Vec<String>> {
        Ok(self
            .pauses()?
            .into_iter()
            .filter(|p| p.holds_at(now_ms))
            .map(|p| p.account)
            .collect())
    }
}

impl Tx<'_> {
    /// Pauses `account` until `until_ms` (or later, when a pause still
    /// running ends later). A pause lasts until a clean run of the account
    /// clears it ([`Tx::clear_pause`]): another limit hit before that is
    /// the same pause (its start kept, `strikes` one more); only a pause
    /// with no row before is new. Returns the pause and whether it is new
    /// (one notification per pause).
    pub fn pause_account(
        &self,
        account: &str,
        kind: &str,
        reason: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> anyhow::Result<(Pause, bool)> {
        let old = self.pause(account)?;
        // A pause begun before the clock went back lends neither its start
        // nor its end (it no longer holds); its strikes still count.
        let live = old
            .as_ref()
            .filter(|p| !crate::clock::set_in_the_future(p.since_ms, now_ms));
        let since = live.map_or(now_ms, |p| p.since_ms);
        let until = live.map_or(until_ms, |p| p.until_ms.max(until_ms));
        self.conn
            .prepare_cached(
                "INSERT INTO pauses (account, kind, reason, since_ms, until_ms, strikes) \
                 VALUES (?1,?2,?3,?4,?5,1) ON CONFLICT(account) DO UPDATE SET kind=excluded.kind, \
                 reason=excluded.reason, since_ms=excluded.since_ms, until_ms=excluded.until_ms, \
                 strikes=pauses.strikes+1",
            )?
            .execute(params![account, kind, reason, since, until])?;
        let p = self
            .pause(account)?
            .ok_or_else(|| anyhow::anyhow!("pause of {account} vanished in its own transaction"))?;
        Ok((p, old.is_none()))
    }

    /// A clean run of `account`: its pause (and strikes) are gone. Returns
    /// whether there was one.
    pub fn clear_pause(&self, account: &str) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM pauses WHERE account=?1")?
            .execute([account])?
            == 1)
    }
}
