//! The semantic cache's index at scale: an exact flat scan against usearch's HNSW, as the
//! gateway's `cache::index::Index` runs them, for one scope of N entries. Vectors are random
//! unit vectors; queries are stored vectors with noise added, so each has a true nearest entry.
//! Each index is built in its own process. Prints a markdown table: build time, memory (RSS growth), query p50/p99 and HNSW recall@1
//! against the flat answer.
//!
//!   cargo run --release --example cache_index [-- 1000,10000,100000,1000000 [dims...]]

use std::time::Instant;
use tollgate::cache::index::Index;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn unit(&mut self, dims: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dims).map(|_| self.next()).collect();
        tollgate::cache::embed::normalize(&mut v);
        v
    }
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 * p) as usize).min(xs.len() - 1)]
}

struct Row {
    build_s: f64,
    mib: f64,
    p50_us: f64,
    p99_us: f64,
    found: Vec<u128>,
}

/// Noisy copies of the first 1000 stored vectors (regenerated from the same seed), so each
/// query has a true nearest entry.
fn queries(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let stored: Vec<Vec<f32>> = (0..n.min(1000)).map(|_| rng.unit(dims)).collect();
    let mut noise = Rng(7);
    stored
        .iter()
        .map(|v| {
            let mut q: Vec<f32> = v.iter().map(|x| x + 0.05 * noise.next()).collect();
            tollgate::cache::embed::normalize(&mut q);
            q
        })
        .collect()
}

/// One index in this process: build, then time each query. Prints one line:
/// `build_s mib p50 p99 id,id,...`.
fn one(n: usize, dims: usize, hnsw_from: usize) {
    let seed = 0x9e37_79b9_7f4a_7c15 ^ (n as u64) ^ ((dims as u64) << 32);
    let queries = queries(n, dims, seed);
    let before = rss_kib();
    let index = Index::new(dims, hnsw_from, n + 1);
    let mut rng = Rng(seed);
    let t = Instant::now();
    for i in 0..n {
        index.insert(1, i as u128, &rng.unit(dims), u64::MAX);
    }
    let build_s = t.elapsed().as_secs_f64();
    let mib = rss_kib().saturating_sub(before) as f64 / 1024.0;
    let mut times = Vec::with_capacity(queries.len());
    let mut found = Vec::with_capacity(queries.len());
    for q in &queries {
        let t = Instant::now();
        let best = index.search(1, q, 4);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        found.push(best.first().map_or(u128::MAX, |b| b.0).to_string());
    }
    println!(
        "{build_s} {mib} {} {} {}",
        percentile(&mut times, 0.5),
        percentile(&mut times, 0.99),
        found.join(",")
    );
}

/// Runs `one` in a child process, so each row's memory is its own.
fn child(n: usize, dims: usize, hnsw_from: usize) -> Option<Row> {
    let out = std::process::Command::new(std::env::current_exe().ok()?)
        .args([
            "--one",
            &n.to_string(),
            &dims.to_string(),
            &hnsw_from.to_string(),
        ])
        .output()
        .ok()?;
    let line = String::from_utf8(out.stdout).ok()?;
    let f: Vec<&str> = line.split_whitespace().collect();
    Some(Row {
        build_s: f.first()?.parse().ok()?,
        mib: f.get(1)?.parse().ok()?,
        p50_us: f.get(2)?.parse().ok()?,
        p99_us: f.get(3)?.parse().ok()?,
        found: f
            .get(4)?
            .split(',')
            .filter_map(|x| x.parse().ok())
            .collect(),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--one") {
        let num = |i: usize| args.get(i).and_then(|x| x.parse().ok()).unwrap_or(0);
        one(num(1), num(2), num(3));
        return;
    }
    let sizes: Vec<usize> = args
        .first()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 2_000, 4_000, 8_000, 10_000, 100_000, 1_000_000]);
    let dims_list: Vec<usize> = match args.get(1) {
        Some(d) => d.split(',').filter_map(|x| x.parse().ok()).collect(),
        None => vec![64, 384],
    };
    println!("| dims | entries | index | build s | RSS MiB | query p50 µs | query p99 µs | recall@1 vs flat |");
    println!("|---|---|---|---|---|---|---|---|");
    for &dims in &dims_list {
        for &n in &sizes {
            // 384-dim flat at 1M needs 1.5 GB: skipped.
            if dims > 64 && n > 100_000 {
                continue;
            }
            let (Some(flat), Some(hnsw)) = (child(n, dims, usize::MAX), child(n, dims, 0)) else {
                eprintln!("{dims} dims, {n} entries: a run failed");
                continue;
            };
            let same = flat
                .found
                .iter()
                .zip(&hnsw.found)
                .filter(|(a, b)| a == b)
                .count();
            let recall = same as f64 / flat.found.len().max(1) as f64;
            for (name, r, rec) in [
                ("flat", &flat, "1 (exact)".to_string()),
                ("HNSW", &hnsw, format!("{recall:.3}")),
            ] {
                println!(
                    "| {dims} | {n} | {name} | {:.2} | {:.1} | {:.1} | {:.1} | {rec} |",
                    r.build_s, r.mib, r.p50_us, r.p99_us
                );
            }
        }
    }
}
