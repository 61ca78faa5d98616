//! A small layer over the `devicemapper` crate's ioctl interface: create/remove/suspend
//! devices, send pool messages, read status, with errors that keep the kernel's errno so the
//! backend can turn them into sentences.
//!
//! The crate talks to /dev/mapper/control directly and makes no /dev/mapper/NAME nodes, so
//! devices are used through their kernel node /dev/dm-MINOR (devtmpfs makes it).

use std::fmt;
use std::path::PathBuf;

use devicemapper::{DevId, Device, DmError, DmFlags, DmName, DmOptions, DM};

/// A failed device-mapper call: what was being done, and the errno if the kernel gave one.
#[derive(Debug)]
pub struct DmFail {
    pub what: String,
    pub errno: Option<i32>,
    pub detail: String,
}

impl fmt::Display for DmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(e) => write!(f, "{}: {}", self.what, std::io::Error::from_raw_os_error(e)),
            None => write!(f, "{}: {}", self.what, self.detail),
        }
    }
}

pub type DmRes<T> = std::result::Result<T, DmFail>;

fn fail(what: impl Into<String>, e: DmError) -> DmFail {
    let errno = match &e {
        // The crate boxes nix's Errno, a C-like enum of errno values.
        DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => Some(**errno as i32),
        _ => None,
    };
    DmFail {
        what: what.into(),
        errno,
        detail: e.to_string(),
    }
}

fn name(n: &str) -> DmRes<&DmName> {
    DmName::new(n).map_err(|e| fail(format!("device name {n:?}"), e))
}

pub fn node(dev: Device) -> PathBuf {
    PathBuf::from(format!("/dev/dm-{}", dev.minor))
}

pub struct Dm {
    dm: DM,
}

/// One line of a table: start sector, length in sectors, target type, parameters.
pub type TableLine = (u64, u64, String, String);

impl Dm {
    pub fn open() -> DmRes<Dm> {
        DM::new()
            .map(|dm| Dm { dm })
            .map_err(|e| fail("open /dev/mapper/control", e))
    }

    /// The device number of `n`, or None if no such device exists.
    pub fn device(&self, n: &str) -> DmRes<Option<Device>> {
        match self.dm.device_info(&DevId::Name(name(n)?)) {
            Ok(info) => Ok(Some(info.device())),
            Err(e) => {
                let f = fail(format!("look up device {n}"), e);
                if f.errno == Some(libc::ENXIO) {
                    Ok(None)
                } else {
                    Err(f)
                }
            }
        }
    }

    pub fn is_suspended(&self, n: &str) -> DmRes<bool> {
        let info = self
            .dm
            .device_info(&DevId::Name(name(n)?))
            .map_err(|e| fail(format!("look up device {n}"), e))?;
        Ok(info.flags().contains(DmFlags::DM_SUSPEND))
    }

    /// Create device `n` with `table` and activate it. On failure nothing is left behind.
    pub fn create(&self, n: &str, table: &[TableLine]) -> DmRes<Device> {
        let dm_name = name(n)?;
        let id = DevId::Name(dm_name);
        self.dm
            .device_create(dm_name, None, DmOptions::default())
            .map_err(|e| fail(format!("create device {n}"), e))?;
        let res = self
            .dm
            .table_load(&id, table, DmOptions::default())
            .map_err(|e| fail(format!("load the table of {n} ({})", show(table)), e))
            .and_then(|_| {
                self.dm
                    .device_suspend(&id, DmOptions::default())
                    .map_err(|e| fail(format!("activate {n}"), e))
            });
        match res {
            Ok(info) => Ok(info.device()),
            Err(f) => {
                let _ = self.dm.device_remove(&id, DmOptions::default());
                Err(f)
            }
        }
    }

    /// Remove device `n`. When it is still open and `deferred` is set, the kernel removes it
    /// once its last user closes it. A device that does not exist is not an error.
    pub fn remove(&self, n: &str, deferred: bool) -> DmRes<()> {
        let id = DevId::Name(name(n)?);
        match self.dm.device_remove(&id, DmOptions::default()) {
            Ok(_) => Ok(()),
            Err(e) => {
                let f = fail(format!("remove device {n}"), e);
                match f.errno {
                    Some(libc::ENXIO) => Ok(()),
                    Some(libc::EBUSY) if deferred => self
                        .dm
                        .device_remove(
                            &id,
                            DmOptions::default().set_flags(DmFlags::DM_DEFERRED_REMOVE),
                        )
                        .map(|_| ())
                        .map_err(|e| fail(format!("schedule the removal of device {n}"), e)),
                    _ => Err(f),
                }
            }
        }
    }

    /// Suspend `n`; this also freezes a filesystem mounted on it, so a snapshot taken while
    /// it is suspended is consistent.
    pub fn suspend(&self, n: &str) -> DmRes<()> {
        self.dm
            .device_suspend(
                &DevId::Name(name(n)?),
                DmOptions::default().set_flags(DmFlags::DM_SUSPEND),
            )
            .map(|_| ())
            .map_err(|e| fail(format!("suspend device {n}"), e))
    }

    pub fn resume(&self, n: &str) -> DmRes<()> {
        self.dm
            .device_suspend(&DevId::Name(name(n)?), DmOptions::default())
            .map(|_| ())
            .map_err(|e| fail(format!("resume device {n}"), e))
    }

    pub fn message(&self, n: &str, msg: &str) -> DmRes<()> {
        self.dm
            .target_msg(&DevId::Name(name(n)?), None, msg)
            .map(|_| ())
            .map_err(|e| fail(format!("send {msg:?} to {n}"), e))
    }

    /// The status line of the first target of `n`: (target type, status parameters).
    pub fn status(&self, n: &str) -> DmRes<(String, String)> {
        let (_, lines) = self
            .dm
            .table_status(&DevId::Name(name(n)?), DmOptions::default())
            .map_err(|e| fail(format!("read the status of {n}"), e))?;
        lines
            .into_iter()
            .next()
            .map(|(_, _, t, p)| (t, p))
            .ok_or_else(|| DmFail {
                what: format!("read the status of {n}"),
                errno: None,
                detail: "the device has no table".into(),
            })
    }

    /// Names of all device-mapper devices.
    pub fn list(&self) -> DmRes<Vec<String>> {
        Ok(self
            .dm
            .list_devices()
            .map_err(|e| fail("list devices", e))?
            .into_iter()
            .map(|(n, _, _)| n.to_string())
            .collect())
    }

    /// Target types the kernel has loaded (`thin-pool`, `thin`, ...).
    pub fn targets(&self) -> DmRes<Vec<String>> {
        Ok(self
            .dm
            .list_versions()
            .map_err(|e| fail("list targets", e))?
            .into_iter()
            .map(|(n, ..)| n)
            .collect())
    }
}

fn show(table: &[TableLine]) -> String {
    table
        .iter()
        .map(|(s, l, t, p)| format!("{s} {l} {t} {p}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The fields of a thin-pool status line that the backend uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub transaction_id: u64,
    pub meta_used: u64,
    pub meta_total: u64,
    pub data_used: u64,
    pub data_total: u64,
    /// `rw`, `ro` or `out_of_data_space`; `Fail` when the pool failed.
    pub mode: String,
    pub needs_check: bool,
}

impl PoolStatus {
    pub fn parse(params: &str) -> Option<PoolStatus> {
        let f: Vec<&str> = params.split_whitespace().collect();
        if f.first() == Some(&"Fail") || f.first() == Some(&"Error") {
            return Some(PoolStatus {
                transaction_id: 0,
                meta_used: 0,
                meta_total: 0,
                data_used: 0,
                data_total: 0,
                mode: "Fail".into(),
                needs_check: true,
            });
        }
        let frac = |s: &str| -> Option<(u64, u64)> {
            let (a, b) = s.split_once('/')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        let (meta_used, meta_total) = frac(f.get(1)?)?;
        let (data_used, data_total) = frac(f.get(2)?)?;
        Some(PoolStatus {
            transaction_id: f.first()?.parse().ok()?,
            meta_used,
            meta_total,
            data_used,
            data_total,
            mode: f.get(4).unwrap_or(&"rw").to_string(),
            needs_check: f.contains(&"needs_check"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_status() {
        let s = PoolStatus::parse(
            "0 1655/16384 535/16384 - rw discard_passdown queue_if_no_space - 1024",
        )
        .unwrap();
        assert_eq!(s.transaction_id, 0);
        assert_eq!((s.meta_used, s.meta_total), (1655, 16384));
        assert_eq!((s.data_used, s.data_total), (535, 16384));
        assert_eq!(s.mode, "rw");
        assert!(!s.needs_check);
        let s = PoolStatus::parse(
            "7 10/20 20/20 - out_of_data_space discard_passdown error_if_no_space - 1",
        )
        .unwrap();
        assert_eq!(s.mode, "out_of_data_space");
        assert_eq!(PoolStatus::parse("Fail").unwrap().mode, "Fail");
    }
}
