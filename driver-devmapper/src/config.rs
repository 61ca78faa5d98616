//! The `-o` options of the devmapper backend (`dm.*`) and the configuration they produce.
//!
//! The configuration is recorded in `<home>/config.json` when the pool is first made; later
//! opens use the recorded one, and an option that contradicts it is refused rather than
//! silently ignored (the pool and the base filesystem cannot change shape after the fact).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::DRIVER;
use driver_api::{Error, Result};

/// Filesystem made on the base device (every layer is a snapshot of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fs {
    Ext4,
    Xfs,
}

impl Fs {
    pub fn as_str(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
        }
    }
    pub fn mkfs(self) -> &'static str {
        match self {
            Fs::Ext4 => "mkfs.ext4",
            Fs::Xfs => "mkfs.xfs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub fs: Fs,
    /// Virtual size of the base device, hence of every layer's filesystem (bytes).
    pub base_size: u64,
    /// Thin-pool allocation unit (bytes; a multiple of 64 KiB).
    pub block_size: u64,
    /// Sizes of the sparse files backing a loop pool (bytes).
    pub loop_data_size: u64,
    pub loop_metadata_size: u64,
    /// An existing thin-pool device to use instead of a loop pool.
    pub thin_pool_dev: Option<PathBuf>,
    /// Extra mount options for every layer's filesystem.
    pub mount_options: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fs: Fs::Ext4,
            base_size: 10 << 30,
            block_size: 64 << 10,
            loop_data_size: 100 << 30,
            loop_metadata_size: 2 << 30,
            thin_pool_dev: None,
            mount_options: None,
        }
    }
}

const KNOWN: &[&str] = &[
    "dm.fs",
    "dm.basesize",
    "dm.blocksize",
    "dm.loopdatasize",
    "dm.loopmetadatasize",
    "dm.thinpooldev",
    "dm.mountopt",
];

fn bad(message: String) -> Error {
    Error::driver(DRIVER, message)
}

impl Config {
    /// Apply `-o` options onto `self`; `explicit` collects the names that were given.
    pub fn with_options(
        mut self,
        opts: &BTreeMap<String, String>,
        explicit: &mut Vec<&'static str>,
    ) -> Result<Config> {
        for (key, value) in opts {
            let Some(&name) = KNOWN.iter().find(|k| **k == key.as_str()) else {
                return Err(bad(format!(
                    "unknown option {key:?} (known: {})",
                    KNOWN.join(", ")
                )));
            };
            explicit.push(name);
            match name {
                "dm.fs" => {
                    self.fs = match value.as_str() {
                        "ext4" => Fs::Ext4,
                        "xfs" => Fs::Xfs,
                        other => {
                            return Err(bad(format!(
                                "dm.fs={other}: the filesystem must be ext4 or xfs"
                            )))
                        }
                    }
                }
                "dm.basesize" => self.base_size = parse_size(name, value)?,
                "dm.blocksize" => self.block_size = parse_size(name, value)?,
                "dm.loopdatasize" => self.loop_data_size = parse_size(name, value)?,
                "dm.loopmetadatasize" => self.loop_metadata_size = parse_size(name, value)?,
                "dm.thinpooldev" => {
                    let p = PathBuf::from(value);
                    // Docker accepted a bare dm name as well as a path.
                    self.thin_pool_dev = Some(if p.is_absolute() {
                        p
                    } else {
                        PathBuf::from("/dev/mapper").join(p)
                    });
                }
                "dm.mountopt" => self.mount_options = Some(value.clone()),
                _ => unreachable!(),
            }
        }
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<()> {
        // The kernel's limits for a thin pool: 64 KiB .. 1 GiB blocks, multiples of 64 KiB.
        if self.block_size < (64 << 10)
            || self.block_size > (1 << 30)
            || self.block_size & ((64 << 10) - 1) != 0
        {
            return Err(bad(format!(
                "dm.blocksize={}: must be a multiple of 64KiB between 64KiB and 1GiB",
                self.block_size
            )));
        }
        if self.base_size < (16 << 20) {
            return Err(bad(format!(
                "dm.basesize={}: must be at least 16MiB to hold a filesystem",
                self.base_size
            )));
        }
        if self.thin_pool_dev.is_none() {
            if self.loop_data_size < self.block_size * 16 {
                return Err(bad(format!(
                    "dm.loopdatasize={}: too small for a thin pool",
                    self.loop_data_size
                )));
            }
            // Thin-pool metadata: at least 2 MiB, at most ~16 GiB is used by the kernel.
            if self.loop_metadata_size < (2 << 20) {
                return Err(bad(format!(
                    "dm.loopmetadatasize={}: must be at least 2MiB",
                    self.loop_metadata_size
                )));
            }
        }
        Ok(())
    }

    /// Refuse options that contradict the configuration the pool was made with.
    pub fn check_compatible(&self, wanted: &Config, explicit: &[&'static str]) -> Result<()> {
        for name in explicit {
            let (have, want) = match *name {
                "dm.fs" => (self.fs.as_str().to_string(), wanted.fs.as_str().to_string()),
                "dm.basesize" => (self.base_size.to_string(), wanted.base_size.to_string()),
                "dm.blocksize" => (self.block_size.to_string(), wanted.block_size.to_string()),
                "dm.thinpooldev" => (
                    format!("{:?}", self.thin_pool_dev),
                    format!("{:?}", wanted.thin_pool_dev),
                ),
                // Loop sizes and mount options only matter when the pool is (re)made.
                _ => continue,
            };
            if have != want {
                return Err(bad(format!(
                    "{name} cannot change after the pool was made (it was made with {have}, \
                     asked for {want}); remove the store's directory to start over"
                )));
            }
        }
        Ok(())
    }
}

/// `10G`, `512MiB`, `100GB`, `65536`: sizes with a binary suffix (Docker's units.RAMInBytes).
pub fn parse_size(name: &str, value: &str) -> Result<u64> {
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(bad(format!(
                "{name}={value}: not a size (use a number with K, M, G or T)"
            )))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| bad(format!("{name}={value}: not a size")))?;
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("x", "10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("x", "512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("x", "65536").unwrap(), 65536);
        assert_eq!(parse_size("x", "1.5k").unwrap(), 1536);
        assert!(parse_size("x", "ten").is_err());
        assert!(parse_size("x", "10Q").is_err());
    }

    #[test]
    fn options() {
        let mut opts = BTreeMap::new();
        opts.insert("dm.fs".into(), "xfs".into());
        opts.insert("dm.basesize".into(), "1G".into());
        let mut explicit = vec![];
        let c = Config::default()
            .with_options(&opts, &mut explicit)
            .unwrap();
        assert_eq!(c.fs, Fs::Xfs);
        assert_eq!(c.base_size, 1 << 30);
        assert!(Config::default().check_compatible(&c, &explicit).is_err());
        opts.insert("dm.nope".into(), "1".into());
        let e = Config::default()
            .with_options(&opts, &mut vec![])
            .unwrap_err();
        assert!(e.to_string().contains("unknown option"), "{e}");
        let mut opts = BTreeMap::new();
        opts.insert("dm.blocksize".into(), "4k".into());
        assert!(Config::default().with_options(&opts, &mut vec![]).is_err());
    }
}
