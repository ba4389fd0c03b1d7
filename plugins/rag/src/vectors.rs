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

/// The vectors of the live chunks, with the tantivy document each belongs to.
///
/// Held in RAM as int8 codes with one scale per row (a quarter of the f32 size: 38 MB per
/// 100,000 chunks). A search scans the codes, then rescores the best candidates exactly with
/// their f32 rows read back from the vector file, so results and scores are exact cosines
/// whenever the true top `k` is among the candidates (see the recall test below).
#[derive(Debug, Default)]
pub struct Matrix {
    codes: Vec<i8>,
    scales: Vec<f32>,
    rows: Vec<u64>,
    addrs: Vec<DocAddress>,
    /// The vector file, for exact rescoring (kept open: a full reindex may unlink it while an
    /// older snapshot still answers queries).
    file: Option<File>,
}

/// Candidates rescored exactly: at least this many, or 4·k.
const RESCORE_MIN: usize = 200;

/// Quantises a vector to int8 with its own scale (`v ≈ code · scale`).
fn quantize(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    out.extend(v.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8));
    scale
}

/// Integer dot product of two code rows; written (fixed-width chunks, independent
/// accumulators, no indexing) so that the compiler vectorises it. Not inlined: inside the scan
/// loop the vectoriser gives up on it.
#[inline(never)]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += i32::from(*x) * i32::from(*y);
        }
    }
    let tail: i32 = ra.iter().zip(rb).map(|(x, y)| i32::from(*x) * i32::from(*y)).sum();
    acc.iter().sum::<i32>() + tail
}

fn decode_row(buf: &[u8], out: &mut [f32]) {
    for (v, b) in out.iter_mut().zip(buf.chunks_exact(4)) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

impl Matrix {
    /// Loads the given rows of `path` (streaming the file once, in row order).
    pub fn load(path: &Path, mut entries: Vec<(u64, DocAddress)>) -> Result<Self> {
        if entries.is_empty() {
            return Ok(Self::default());
        }
        entries.sort_unstable_by_key(|(row, _)| *row);
        let file = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let rescore = file.try_clone().map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut m = Matrix {
            codes: Vec::with_capacity(entries.len() * DIM),
            scales: Vec::with_capacity(entries.len()),
            rows: Vec::with_capacity(entries.len()),
            addrs: Vec::with_capacity(entries.len()),
            file: Some(rescore),
        };
        let mut buf = vec![0u8; ROW_BYTES as usize];
        let mut v = [0f32; DIM];
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
                decode_row(&buf, &mut v);
                loaded_row = Some(row);
            }
            let scale = quantize(&v, &mut m.codes);
            m.scales.push(scale);
            m.rows.push(row);
            m.addrs.push(addr);
        }
        Ok(m)
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Bytes of vector data held in memory.
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * 4 + self.rows.len() * 8 + self.addrs.len() * 8
    }

    /// The `k` best documents by cosine (dot product of normalised vectors), best first,
    /// restricted to `allowed` documents when given.
    pub fn search(&self, query: &[f32], k: usize, allowed: Option<&HashSet<DocAddress>>) -> Vec<(f32, DocAddress)> {
        if k == 0 || query.len() != DIM || self.is_empty() {
            return Vec::new();
        }
        let mut q = Vec::with_capacity(DIM);
        let q_scale = quantize(query, &mut q);
        let mut scored: Vec<(f32, u32)> = Vec::with_capacity(match allowed {
            Some(a) => a.len().min(self.len()),
            None => self.len(),
        });
        for (i, codes) in self.codes.chunks_exact(DIM).enumerate() {
            if let Some(allowed) = allowed
                && !allowed.contains(&self.addrs[i])
            {
                continue;
            }
            scored.push((dot_i8(&q, codes) as f32 * q_scale * self.scales[i], i as u32));
        }
        let by_score = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let candidates = (4 * k).max(RESCORE_MIN);
        if scored.len() > candidates {
            scored.select_nth_unstable_by(candidates - 1, by_score);
            scored.truncate(candidates);
        }
        // Exact rescoring from the file; on a read error the approximate score stands.
        if let Some(file) = &self.file {
            let mut buf = [0u8; ROW_BYTES as usize];
            let mut v = [0f32; DIM];
            for (score, i) in &mut scored {
                let row = self.rows[*i as usize];
                match file.read_exact_at(&mut buf, row * ROW_BYTES) {
                    Ok(()) => {
                        decode_row(&buf, &mut v);
                        *score = dot(query, &v);
                    }
                    Err(e) => {
                        tracing::warn!(row, error = %e, "cannot reread a vector; using its int8 score");
                        break;
                    }
                }
            }
        }
        scored.sort_unstable_by(by_score);
        scored.truncate(k);
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

    /// int8 scan + exact rescoring finds the same top 10 as exact f32 search.
    #[test]
    fn quantised_search_matches_exact_search() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v.f32");
        let mut f = VectorFile::create(&path).unwrap();
        // Clustered data (the hard case for quantisation): 20 centres, small perturbations.
        let n = 3000;
        let mut all = Vec::with_capacity(n * DIM);
        for i in 0..n {
            let centre = unit(i % 20);
            let noise = unit(1000 + i);
            let v: Vec<f32> = centre.iter().zip(&noise).map(|(c, e)| c + 0.15 * e).collect();
            let norm = dot(&v, &v).sqrt();
            all.extend(v.iter().map(|x| x / norm));
        }
        f.append(&all).unwrap();
        let m = Matrix::load(&path, (0..n as u64).map(|r| (r, DocAddress::new(0, r as u32))).collect()).unwrap();
        assert!(m.bytes() < n * DIM * 2, "codes, not floats, are held in RAM");
        let mut same = 0;
        for qi in 0..50 {
            let q = &all[(qi * 37 % n) * DIM..(qi * 37 % n + 1) * DIM];
            let mut exact: Vec<(f32, u32)> = (0..n).map(|r| (dot(q, &all[r * DIM..(r + 1) * DIM]), r as u32)).collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0));
            let got = m.search(q, 10, None);
            for (g, e) in got.iter().zip(&exact) {
                assert!((g.0 - e.0).abs() < 1e-5, "scores are exact cosines");
            }
            let want: HashSet<u32> = exact[..10].iter().map(|e| e.1).collect();
            same += got.iter().filter(|g| want.contains(&g.1.doc_id)).count();
        }
        assert!(same >= 495, "recall@10 against exact search: {same}/500");
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
