//! The vector side: an append-only file of normalised f32 rows, and the in-memory matrix that
//! queries scan (exact brute-force cosine, no ANN).
//!
//! Crash safety: rows are appended and fsynced *before* the tantivy commit that references
//! them, so every row a committed chunk points at is complete on disk. Rows appended by a
//! reindex that never committed are garbage that nothing references; a torn last row is cut
//! off when the file is opened. A full reindex writes a new file (named in the commit payload)
//! and the old one is removed after the switch.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tantivy::DocAddress;

use crate::embed::{DIM, dot};
use crate::error::{Error, Result};

/// Bytes per stored row.
pub const ROW_BYTES: u64 = (DIM * 4) as u64;

/// An open vector file.
#[derive(Debug)]
pub struct VectorFile {
    path: PathBuf,
    file: File,
    rows: u64,
}

impl VectorFile {
    /// Opens (creating if needed) and cuts a torn trailing row.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| Error::io(format!("stat {}", path.display()), e))?.len();
        let rows = len / ROW_BYTES;
        if rows * ROW_BYTES != len {
            file.set_len(rows * ROW_BYTES).map_err(|e| Error::io(format!("truncate {}", path.display()), e))?;
        }
        Ok(Self { path: path.to_owned(), file, rows })
    }

    /// Creates an empty file (replacing a leftover of an interrupted run).
    pub fn create(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        Ok(Self { path: path.to_owned(), file, rows: 0 })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends rows (`data.len()` a multiple of [`DIM`]); returns the index of the first one.
    pub fn append(&mut self, data: &[f32]) -> Result<u64> {
        let first = self.rows;
        let mut bytes = Vec::with_capacity(data.len() * 4);
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.file
            .write_all_at(&bytes, first * ROW_BYTES)
            .map_err(|e| Error::io(format!("write {}", self.path.display()), e))?;
        self.rows += (data.len() / DIM) as u64;
        Ok(first)
    }

    /// Reads one row.
    pub fn read_row(&self, row: u64, out: &mut [f32; DIM]) -> Result<()> {
        let mut buf = [0u8; ROW_BYTES as usize];
        self.file
            .read_exact_at(&mut buf, row * ROW_BYTES)
            .map_err(|e| Error::io(format!("read row {row} of {}", self.path.display()), e))?;
        for (i, v) in out.iter_mut().enumerate() {
            *v = f32::from_le_bytes([buf[i * 4], buf[i * 4 + 1], buf[i * 4 + 2], buf[i * 4 + 3]]);
        }
        Ok(())
    }

    /// Makes every appended row durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(format!("fsync {}", self.path.display()), e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("fsync {}", dir.display()), e))?;
        }
        Ok(())
    }
}

/// The vectors of the live chunks, contiguous, with the tantivy document each belongs to.
#[derive(Debug, Default)]
pub struct Matrix {
    data: Vec<f32>,
    addrs: Vec<DocAddress>,
}

impl Matrix {
    /// Loads the given rows of `path` (streaming the file once, in row order).
    pub fn load(path: &Path, mut entries: Vec<(u64, DocAddress)>) -> Result<Self> {
        if entries.is_empty() {
            return Ok(Self::default());
        }
        entries.sort_unstable_by_key(|(row, _)| *row);
        let file = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut data = Vec::with_capacity(entries.len() * DIM);
        let mut addrs = Vec::with_capacity(entries.len());
        let mut buf = vec![0u8; ROW_BYTES as usize];
        let mut next_row = 0u64;
        let mut loaded_row: Option<u64> = None;
        for (row, addr) in entries {
            if loaded_row != Some(row) {
                while next_row <= row {
                    reader.read_exact(&mut buf).map_err(|e| {
                        Error::io(format!("read row {next_row} of {} (the index references it)", path.display()), e)
                    })?;
                    next_row += 1;
                }
                loaded_row = Some(row);
            }
            data.extend(buf.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            addrs.push(addr);
        }
        Ok(Self { data, addrs })
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Bytes of vector data held in memory.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// The `k` best rows by cosine (dot product of normalised vectors), best first, restricted
    /// to `allowed` documents when given.
    pub fn search(&self, query: &[f32], k: usize, allowed: Option<&HashSet<DocAddress>>) -> Vec<(f32, DocAddress)> {
        if k == 0 || query.len() != DIM {
            return Vec::new();
        }
        let mut scored: Vec<(f32, u32)> = Vec::with_capacity(match allowed {
            Some(a) => a.len().min(self.len()),
            None => self.len(),
        });
        for (i, row) in self.data.chunks_exact(DIM).enumerate() {
            if let Some(allowed) = allowed
                && !allowed.contains(&self.addrs[i])
            {
                continue;
            }
            scored.push((dot(query, row), i as u32));
        }
        let by_score = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, by_score);
            scored.truncate(k);
        }
        scored.sort_unstable_by(by_score);
        scored.into_iter().map(|(s, i)| (s, self.addrs[i as usize])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn unit(seed: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..DIM).map(|i| ((i * 7 + seed * 13) as f32 * 0.1).sin()).collect();
        let n = dot(&v, &v).sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn append_reopen_and_torn_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v.f32");
        let mut f = VectorFile::create(&path).unwrap();
        let mut data = unit(1);
        data.extend(unit(2));
        assert_eq!(f.append(&data).unwrap(), 0);
        assert_eq!(f.append(&unit(3)).unwrap(), 2);
        f.sync().unwrap();
        drop(f);
        // A crash mid-append leaves half a row.
        let mut raw = OpenOptions::new().append(true).open(&path).unwrap();
        raw.write_all(&[1u8; 100]).unwrap();
        drop(raw);
        let f = VectorFile::open(&path).unwrap();
        assert_eq!(f.rows(), 3);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * ROW_BYTES);
        let mut row = [0f32; DIM];
        f.read_row(1, &mut row).unwrap();
        assert_eq!(row.to_vec(), unit(2));
    }

    #[test]
    fn matrix_search_is_exact_and_filtered() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v.f32");
        let mut f = VectorFile::create(&path).unwrap();
        for s in 0..50 {
            f.append(&unit(s)).unwrap();
        }
        // Rows 10..40 are live (rows 0..10 and 40.. were superseded), one row shared by two docs.
        let mut entries: Vec<(u64, DocAddress)> = (10..40).map(|r| (r, DocAddress::new(0, r as u32))).collect();
        entries.push((20, DocAddress::new(1, 0)));
        let m = Matrix::load(&path, entries).unwrap();
        assert_eq!(m.len(), 31);
        let q = unit(25);
        let hits = m.search(&q, 3, None);
        assert_eq!(hits[0].1, DocAddress::new(0, 25));
        assert!((hits[0].0 - 1.0).abs() < 1e-4);
        assert!(hits.windows(2).all(|w| w[0].0 >= w[1].0));
        let allowed: HashSet<DocAddress> = [DocAddress::new(0, 11), DocAddress::new(1, 0)].into();
        let hits = m.search(&q, 10, Some(&allowed));
        assert_eq!(hits.len(), 2);
        assert!(m.search(&unit(5), 10, None).iter().all(|(_, a)| a.doc_id >= 10 || a.segment_ord == 1));
        // A row the index references but the file lacks is an error, not a panic.
        assert!(Matrix::load(&path, vec![(99, DocAddress::new(0, 0))]).is_err());
    }
}
