//! A simulated disk for redb: it keeps what was synced apart from what was only written, so a
//! test can cut the power at any moment and get the image a real disk might hold afterwards
//! (every write since the last sync kept, dropped, or torn at a sector boundary, in any
//! combination). It can also fail or delay syncs.

#![allow(dead_code, unreachable_pub)]

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::StorageBackend;

const SECTOR: usize = 512;

/// What happens to the writes since the last sync when the power is cut.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Every unsynced write is lost.
    DropAll,
    /// Each unsynced write is kept, lost, or torn (a random run of its sectors kept), at
    /// random: the page cache writes back in any order.
    Random(u64),
}

#[derive(Debug, Default)]
struct State {
    // What a reader sees now.
    current: Vec<u8>,
    // What was on the platter at the last sync.
    synced: Vec<u8>,
    // Everything since the last sync, in order.
    pending: Vec<Op>,
    fail_syncs: bool,
    sync_delay: Duration,
    syncs: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// A handle on one simulated disk; clones share it. [`SimDisk::backend`] is what redb gets.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A disk holding `image`, all of it synced.
    pub fn from_image(image: Vec<u8>) -> SimDisk {
        let disk = SimDisk::new();
        {
            let mut state = disk.state.lock().unwrap();
            state.current = image.clone();
            state.synced = image;
        }
        disk
    }

    /// The storage backend to give redb.
    pub fn backend(&self) -> SimBackend {
        SimBackend { disk: self.clone() }
    }

    /// From now on every sync fails (or succeeds again).
    pub fn fail_syncs(&self, fail: bool) {
        self.state.lock().unwrap().fail_syncs = fail;
    }

    /// Every sync takes this much longer (what a cloud disk's fsync costs).
    pub fn sync_delay(&self, delay: Duration) {
        self.state.lock().unwrap().sync_delay = delay;
    }

    /// Syncs so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().unwrap().syncs
    }

    /// The image the disk holds if the power is cut now. The disk itself goes on unchanged.
    pub fn cut(&self, cut: Cut) -> Vec<u8> {
        let state = self.state.lock().unwrap();
        let mut image = state.synced.clone();
        let mut rng = match cut {
            Cut::DropAll => return image,
            Cut::Random(seed) => Rng(seed | 1),
        };
        for op in &state.pending {
            match op {
                // The file's length is metadata the journal keeps in order.
                Op::SetLen(len) => image.resize(*len as usize, 0),
                Op::Write { offset, data } => {
                    let (start, end) = match rng.below(3) {
                        0 => continue,
                        1 => (0, data.len()),
                        _ => {
                            let sectors = data.len().div_ceil(SECTOR);
                            let first = rng.below(sectors as u64) as usize;
                            let last = first + rng.below((sectors - first) as u64) as usize;
                            (first * SECTOR, ((last + 1) * SECTOR).min(data.len()))
                        }
                    };
                    let offset = *offset as usize + start;
                    let end_at = offset + (end - start);
                    if image.len() < end_at {
                        image.resize(end_at, 0);
                    }
                    image[offset..end_at].copy_from_slice(&data[start..end]);
                }
            }
        }
        image
    }
}

/// The simulated disk as redb sees it.
#[derive(Debug)]
pub struct SimBackend {
    disk: SimDisk,
}

impl StorageBackend for SimBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.disk.state.lock().unwrap().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.disk.state.lock().unwrap();
        let start = offset as usize;
        let end = start + out.len();
        if end > state.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&state.current[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.disk.state.lock().unwrap();
        state.current.resize(len as usize, 0);
        state.pending.push(Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = {
            let state = self.disk.state.lock().unwrap();
            if state.fail_syncs {
                return Err(io::Error::other("injected fsync failure"));
            }
            state.sync_delay
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut state = self.disk.state.lock().unwrap();
        let state = &mut *state;
        for op in state.pending.drain(..) {
            match op {
                Op::SetLen(len) => state.synced.resize(len as usize, 0),
                Op::Write { offset, data } => {
                    let end = offset as usize + data.len();
                    if state.synced.len() < end {
                        state.synced.resize(end, 0);
                    }
                    state.synced[offset as usize..end].copy_from_slice(&data);
                }
            }
        }
        state.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.disk.state.lock().unwrap();
        let start = offset as usize;
        let end = start + data.len();
        if state.current.len() < end {
            state.current.resize(end, 0);
        }
        state.current[start..end].copy_from_slice(data);
        state.pending.push(Op::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}

/// A small deterministic generator (xorshift), so that a failing seed replays exactly.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// A file on the real disk whose every sync takes `delay` longer.
#[derive(Debug)]
pub struct SlowSync {
    pub inner: redb::backends::FileBackend,
    pub delay: Duration,
}

impl StorageBackend for SlowSync {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
}
