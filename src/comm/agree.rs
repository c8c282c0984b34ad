//! "Rank 0 decides, every rank agrees": one helper for every decision that only one rank
//! may make (planning the input, preparing or committing an output, choosing the
//! checkpoint to restore), so that every rank returns the same value or the same typed
//! error, and no rank waits forever for a decision that failed.

use super::Comm;
use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// An error on its way from rank 0: the variants that name files, options and outputs
/// survive the trip as themselves; the rest arrive as [`Error::GangFailed`] naming rank 0,
/// with rank 0's message (rank 0 records the failure with its class).
#[derive(Serialize, Deserialize)]
enum WireError {
    Input { path: PathBuf, location: Option<String>, rank: Option<usize>, detail: String },
    SchemaMismatch { first: PathBuf, second: PathBuf, field: String, detail: String },
    Output { path: PathBuf, detail: String },
    InvalidArgument(String),
    Environment(String),
    Other(String),
}

impl WireError {
    fn from_error(e: &Error) -> WireError {
        match e {
            Error::Input { path, location, rank, detail } => WireError::Input {
                path: path.clone(),
                location: location.clone(),
                rank: Some(rank.unwrap_or(0)),
                detail: detail.clone(),
            },
            Error::SchemaMismatch { first, second, field, detail } => WireError::SchemaMismatch {
                first: first.clone(),
                second: second.clone(),
                field: field.clone(),
                detail: detail.clone(),
            },
            Error::Output { path, detail } => WireError::Output { path: path.clone(), detail: detail.clone() },
            Error::InvalidArgument(m) => WireError::InvalidArgument(m.clone()),
            Error::Environment(m) => WireError::Environment(m.clone()),
            other => WireError::Other(other.to_string()),
        }
    }

    fn into_error(self, stage: &str) -> Error {
        match self {
            WireError::Input { path, location, rank, detail } => Error::Input { path, location, rank, detail },
            WireError::SchemaMismatch { first, second, field, detail } => {
                Error::SchemaMismatch { first, second, field, detail }
            }
            WireError::Output { path, detail } => Error::Output { path, detail },
            WireError::InvalidArgument(m) => Error::InvalidArgument(m),
            WireError::Environment(m) => Error::Environment(m),
            WireError::Other(message) => Error::GangFailed { rank: 0, stage: stage.into(), message },
        }
    }
}

impl Comm {
    /// Rank 0 runs `decide`; every rank returns its value, or the same error. Collective;
    /// `decide` runs on rank 0 only, and `stage` names the decision in errors.
    ///
    /// Errors about inputs, schemas, outputs, arguments and the environment reach the
    /// other ranks as the same [`Error`] variant (an input error names rank 0 as the rank
    /// that read the file, on rank 0 too); rank 0's other errors reach them as [`Error::GangFailed`]
    /// naming rank 0 and its message, while rank 0 gets its own error back.
    ///
    /// # Examples
    /// ```
    /// use gang::{execute, Config, Error};
    ///
    /// let out = execute(Config::local(3), |ctx| ctx.comm().agree("count", || Ok(ctx.rank() + 41))).unwrap();
    /// assert_eq!(out, vec![41, 41, 41]);
    ///
    /// let err = execute(Config::local(2), |ctx| {
    ///     let r: gang::Result<u8> = ctx.comm().agree("check", || Err(Error::InvalidArgument("no".into())));
    ///     Ok(matches!(r, Err(Error::InvalidArgument(m)) if m == "no"))
    /// });
    /// assert_eq!(err.unwrap(), vec![true, true]);
    /// ```
    ///
    /// # Errors
    /// `decide`'s error as above; communication errors; [`Error::GangFailed`] if rank 0's
    /// decision cannot be read.
    pub fn agree<T, F>(&self, stage: &str, decide: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Result<T>,
    {
        let mut value = None;
        let bytes = self.agree_bytes(stage, || {
            let v = decide()?;
            let b = serde_json::to_vec(&v)
                .map_err(|e| Error::external(format!("{stage}: rank 0 could not encode its decision: {e}")))?;
            value = Some(v);
            Ok(b)
        })?;
        match value {
            Some(v) => Ok(v),
            None => serde_json::from_slice(&bytes).map_err(|e| Error::GangFailed {
                rank: 0,
                stage: stage.into(),
                message: format!("unreadable decision of rank 0: {e}"),
            }),
        }
    }

    /// [`Comm::agree`] on a decision that is already bytes (a plan in its own encoding):
    /// no second encoding on the way.
    ///
    /// # Errors
    /// As [`Comm::agree`].
    pub fn agree_bytes<F>(&self, stage: &str, decide: F) -> Result<Vec<u8>>
    where
        F: FnOnce() -> Result<Vec<u8>>,
    {
        const OK: u8 = 0;
        const ERR: u8 = 1;
        if self.rank() != 0 {
            let mut buf = Vec::new();
            self.broadcast_bytes(0, &mut buf)?;
            return match buf.split_first() {
                Some((&OK, _)) => {
                    buf.remove(0);
                    Ok(buf)
                }
                Some((&ERR, wire)) => Err(serde_json::from_slice::<WireError>(wire)
                    .map(|w| w.into_error(stage))
                    .unwrap_or_else(|e| Error::GangFailed {
                        rank: 0,
                        stage: stage.into(),
                        message: format!("unreadable error of rank 0: {e}"),
                    })),
                _ => {
                    Err(Error::GangFailed { rank: 0, stage: stage.into(), message: "empty decision of rank 0".into() })
                }
            };
        }
        let decided = decide();
        let mut buf = match &decided {
            Ok(v) => {
                let mut b = Vec::with_capacity(v.len() + 1);
                b.push(OK);
                b.extend_from_slice(v);
                b
            }
            Err(e) => {
                let mut b = vec![ERR];
                b.extend_from_slice(&serde_json::to_vec(&WireError::from_error(e)).expect("errors encode"));
                b
            }
        };
        self.broadcast_bytes(0, &mut buf)?;
        decided.map_err(|e| e.with_rank(0))
    }
}

#[cfg(test)]
mod tests {
    use crate::{execute, Config, Error};

    #[test]
    fn every_rank_gets_rank_0s_value_or_its_typed_error() {
        let out = execute(Config::local(3), |ctx| {
            let v: Vec<u64> = ctx.comm().agree("v", || Ok(vec![7, ctx.rank() as u64]))?;
            let e = ctx
                .comm()
                .agree::<u8, _>("read", || Err(Error::input("x.parquet", Some("footer".into()), "bad magic")))
                .unwrap_err();
            let o = ctx.comm().agree::<u8, _>("out", || Err(Error::Output { path: "o/".into(), detail: "d".into() }));
            let other = ctx.comm().agree::<u8, _>("commit", || Err(Error::from("disk full"))).unwrap_err();
            let schema =
                Error::SchemaMismatch { first: "a".into(), second: "b".into(), field: "x".into(), detail: "d".into() };
            let want = schema.to_string();
            let got = ctx.comm().agree::<u8, _>("plan", || Err(schema)).unwrap_err();
            assert!(matches!(&got, Error::SchemaMismatch { .. }) && got.to_string() == want, "{got}");
            Ok((v, e.to_string(), matches!(o, Err(Error::Output { .. })), other.to_string(), ctx.rank()))
        })
        .unwrap();
        for (v, e, o, other, rank) in out {
            assert_eq!(v, vec![7, 0]);
            assert_eq!(e, "x.parquet (footer, rank 0): bad magic");
            assert!(o);
            if rank == 0 {
                assert_eq!(other, "disk full");
            } else {
                assert_eq!(other, "the gang failed: rank 0 failed in commit: disk full");
            }
        }
    }
}
