//! Semantic-cache quality: how often a similarity threshold gives a hit, and how often that hit
//! is wrong, for each local embedder. Run through `scripts/cache_eval.sh`, or
//!   cargo run --release --example cache_eval -- --data DIR --models DIR
//!     [--embedders static,minilm] [--thresholds 0.8,0.9,...] [--threads N]
//!
//! Method. Every text is embedded once per embedder; the cache search is the gateway's own
//! `cache::index::Index` (one scope, exact flat search).
//! 1. Banking77 (test split, 3,080 queries, 77 intents) as repeated-intent traffic: the queries,
//!    shuffled with a fixed seed, stream through an empty cache. A query whose nearest stored
//!    question has cosine >= t is a hit, a false hit if that question's intent differs;
//!    otherwise it is a miss and is stored. The store depends on t, so the stream is replayed
//!    per threshold. Hit rate = hits / N; false-hit rate = false hits / hits.
//! 2. QQP (10,000 labelled question pairs): cosine(q1, q2) >= t predicts "duplicate", i.e. a
//!    hit. Precision and recall against the labels; false-hit rate = 1 - precision (pairs
//!    labelled not duplicate among the hits); hit rate = hits / N.
//!
//! The recommended threshold is the lowest whose Banking77 and QQP false-hit rates are both at
//! most 2%; failing that, the lowest meeting it on Banking77 alone, with the QQP figure there.
//! QQP is evaluation-only data: it is read from the shared data directory, never copied here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tollgate::cache::embed::minilm::MiniLm;
use tollgate::cache::embed::static_model::StaticModel;
use tollgate::cache::embed::Embed;
use tollgate::cache::index::Index;

const TARGET: f64 = 0.02;
const SEED: u64 = 0x5eed_cafe_f00d_d00d;

#[derive(Parser)]
#[command(about = "Semantic-cache hit and false-hit rates on Banking77 and QQP")]
struct Args {
    /// Directory with banking77_test.csv and qqp_pairs_10k.csv.
    #[arg(long)]
    data: PathBuf,
    /// Directory with the static/ and minilm/ model directories.
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Embedders to evaluate.
    #[arg(long, value_delimiter = ',', default_value = "static,minilm")]
    embedders: Vec<String>,
    /// Similarity thresholds.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.70,0.75,0.80,0.85,0.88,0.90,0.92,0.94,0.95,0.96,0.97,0.98,0.99"
    )]
    thresholds: Vec<f32>,
    /// Embedding threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// RFC 4180: comma-separated, fields optionally in double quotes, `""` inside quotes is one
/// quote, and quoted fields may hold commas and newlines. CRLF and LF both end a record.
fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut line = 1usize;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => quoted = true,
            '"' => return Err(format!("line {line}: stray quote in an unquoted field")),
            ',' => row.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                line += 1;
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field at end of file".into());
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

/// The rows of `path` under its header, as the named columns in order.
fn read_csv(path: &Path, columns: &[&str]) -> Result<Vec<Vec<String>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let rows = parse_csv(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = rows.into_iter();
    let header = rows.next().ok_or(format!("{}: empty", path.display()))?;
    let at: Vec<usize> = columns
        .iter()
        .map(|c| {
            header
                .iter()
                .position(|h| h == c)
                .ok_or(format!("{}: no column {c}", path.display()))
        })
        .collect::<Result<_, _>>()?;
    rows.enumerate()
        .map(|(i, r)| {
            if r.len() != header.len() {
                return Err(format!(
                    "{}: record {} has {} fields, header has {}",
                    path.display(),
                    i + 1,
                    r.len(),
                    header.len()
                ));
            }
            Ok(at.iter().map(|&j| r[j].clone()).collect())
        })
        .collect()
}

struct Data {
    /// Banking77 (text, intent), in the fixed shuffled stream order.
    banking: Vec<(String, String)>,
    /// QQP (question1, question2, is_duplicate).
    qqp: Vec<(String, String, bool)>,
}

fn load_data(dir: &Path) -> Result<Data, String> {
    let mut banking: Vec<(String, String)> =
        read_csv(&dir.join("banking77_test.csv"), &["text", "category"])?
            .into_iter()
            .map(|mut r| (std::mem::take(&mut r[0]), std::mem::take(&mut r[1])))
            .collect();
    // Fisher-Yates with xorshift64.
    let mut s = SEED;
    for i in (1..banking.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        banking.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let qqp_path = dir.join("qqp_pairs_10k.csv");
    let qqp = read_csv(&qqp_path, &["question1", "question2", "is_duplicate"])?
        .into_iter()
        .map(|mut r| {
            let dup = match r[2].as_str() {
                "1" => true,
                "0" => false,
                o => return Err(format!("{}: is_duplicate {o:?}", qqp_path.display())),
            };
            Ok((std::mem::take(&mut r[0]), std::mem::take(&mut r[1]), dup))
        })
        .collect::<Result<_, String>>()?;
    Ok(Data { banking, qqp })
}

/// Embeds `texts` over `threads` threads, keeping their order.
fn embed_all(model: &dyn Embed, texts: &[&str], threads: usize) -> Result<Vec<Vec<f32>>, String> {
    let chunk = texts.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|sc| {
        let handles: Vec<_> = texts
            .chunks(chunk)
            .map(|part| {
                sc.spawn(move || {
                    part.iter()
                        .map(|t| model.embed(t))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(texts.len());
        for h in handles {
            out.extend(h.join().map_err(|_| "an embedding thread panicked")??);
        }
        Ok(out)
    })
}

#[derive(Clone, Copy, Default)]
struct Row {
    t: f32,
    b_hits: usize,
    b_false: usize,
    q_hits: usize,
    q_true: usize,
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |x| format!("{:.1}%", 100.0 * x))
}

/// `a / n` as a percentage, with the count.
fn count(a: usize, n: usize) -> String {
    format!("{} ({a})", pct(ratio(a, n)))
}

/// Banking77 false hits / hits; None without hits.
fn b_false_rate(r: &Row) -> Option<f64> {
    ratio(r.b_false, r.b_hits)
}

/// QQP 1 - precision; None without hits.
fn q_false_rate(r: &Row) -> Option<f64> {
    ratio(r.q_hits - r.q_true, r.q_hits)
}

/// Replays the Banking77 stream through an empty cache at threshold `t`: (hits, false hits).
fn banking_stream(dims: usize, vecs: &[Vec<f32>], intents: &[&str], t: f32) -> (usize, usize) {
    let index = Index::new(dims, usize::MAX, usize::MAX);
    let (mut hits, mut false_hits) = (0, 0);
    for (i, v) in vecs.iter().enumerate() {
        match index.search(0, v, 1).first() {
            Some(&(key, cos)) if cos >= t => {
                hits += 1;
                if intents[key as usize] != intents[i] {
                    false_hits += 1;
                }
            }
            _ => {
                index.insert(0, i as u128, v, u64::MAX);
            }
        }
    }
    (hits, false_hits)
}

/// The index of `t` in `texts`, adding it if new.
fn intern<'a>(t: &'a str, slot: &mut HashMap<&'a str, usize>, texts: &mut Vec<&'a str>) -> usize {
    *slot.entry(t).or_insert_with(|| {
        texts.push(t);
        texts.len() - 1
    })
}

fn evaluate(name: &str, args: &Args, data: &Data, threads: usize) -> Result<(), String> {
    let dir = args.models.join(name);
    let start = Instant::now();
    let model: Box<dyn Embed> = match name {
        "static" => Box::new(StaticModel::load(&dir)?),
        "minilm" => Box::new(MiniLm::load(&dir)?),
        o => return Err(format!("unknown embedder {o:?} (static or minilm)")),
    };
    let loaded = start.elapsed();
    let dims = model.dims();

    // Each distinct text once: the Banking77 stream, then the QQP questions.
    let (mut slot, mut texts) = (HashMap::new(), Vec::new());
    let b_ids: Vec<usize> = data
        .banking
        .iter()
        .map(|(t, _)| intern(t, &mut slot, &mut texts))
        .collect();
    let q_ids: Vec<(usize, usize)> = data
        .qqp
        .iter()
        .map(|(a, b, _)| {
            (
                intern(a, &mut slot, &mut texts),
                intern(b, &mut slot, &mut texts),
            )
        })
        .collect();
    let start = Instant::now();
    let vecs = embed_all(model.as_ref(), &texts, threads)?;
    let took = start.elapsed().as_secs_f64();
    println!(
        "## {name} ({dims} dims)\n\nLoaded in {:.2} s; embedded {} distinct texts in {:.1} s on {threads} \
         thread(s): {:.0} texts/s.\n",
        loaded.as_secs_f64(),
        texts.len(),
        took,
        texts.len() as f64 / took.max(1e-9)
    );

    let b_vecs: Vec<Vec<f32>> = b_ids.iter().map(|&i| vecs[i].clone()).collect();
    let intents: Vec<&str> = data.banking.iter().map(|(_, c)| c.as_str()).collect();
    // QQP cosines through the index too: one scope per pair holding q2, searched with q1.
    let pairs = Index::new(dims, usize::MAX, usize::MAX);
    let mut cos = Vec::with_capacity(q_ids.len());
    for (i, &(a, b)) in q_ids.iter().enumerate() {
        pairs.insert(i as u128, 0, &vecs[b], u64::MAX);
        cos.push(
            pairs
                .search(i as u128, &vecs[a], 1)
                .first()
                .map_or(-1.0, |m| m.1),
        );
    }

    // The Banking77 replays are independent per threshold: spread them over the threads.
    let per = args.thresholds.len().div_ceil(threads.max(1)).max(1);
    let banking: Vec<(usize, usize)> = std::thread::scope(|sc| {
        let handles: Vec<_> = args
            .thresholds
            .chunks(per)
            .map(|ts| {
                let (b_vecs, intents) = (&b_vecs, &intents);
                sc.spawn(move || {
                    ts.iter()
                        .map(|&t| banking_stream(dims, b_vecs, intents, t))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(h.join().map_err(|_| "a replay thread panicked")?);
        }
        Ok::<_, String>(out)
    })?;

    let rows: Vec<Row> = args
        .thresholds
        .iter()
        .zip(banking)
        .map(|(&t, (b_hits, b_false))| {
            let mut r = Row {
                t,
                b_hits,
                b_false,
                ..Row::default()
            };
            for (c, q) in cos.iter().zip(&data.qqp) {
                if *c >= t {
                    r.q_hits += 1;
                    r.q_true += usize::from(q.2);
                }
            }
            r
        })
        .collect();
    print_table(&rows, data);
    recommend(name, &rows, data);
    Ok(())
}

fn print_table(rows: &[Row], data: &Data) {
    let (nb, nq) = (data.banking.len(), data.qqp.len());
    let dups = data.qqp.iter().filter(|q| q.2).count();
    println!(
        "| threshold | Banking77 hit rate | Banking77 false-hit rate | QQP precision | QQP recall \
         | QQP false-hit rate | Banking77 false hits / N | QQP hit rate |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            r.t,
            count(r.b_hits, nb),
            pct(b_false_rate(r)),
            pct(ratio(r.q_true, r.q_hits)),
            pct(ratio(r.q_true, dups)),
            pct(q_false_rate(r)),
            pct(ratio(r.b_false, nb)),
            count(r.q_hits, nq),
        );
    }
    println!();
}

fn recommend(name: &str, rows: &[Row], data: &Data) {
    let nb = data.banking.len();
    let ok = |x: Option<f64>| x.is_some_and(|x| x <= TARGET);
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by(|a, b| a.t.total_cmp(&b.t));
    let target = 100.0 * TARGET;
    if let Some(r) = sorted
        .iter()
        .find(|r| ok(b_false_rate(r)) && ok(q_false_rate(r)))
    {
        println!(
            "Recommended for {name}: {:.2} (Banking77 hit rate {}, false-hit rate {}; QQP \
             false-hit rate {}, recall {}).\n",
            r.t,
            pct(ratio(r.b_hits, nb)),
            pct(b_false_rate(r)),
            pct(q_false_rate(r)),
            pct(ratio(r.q_true, data.qqp.iter().filter(|q| q.2).count())),
        );
    } else if let Some(r) = sorted.iter().find(|r| ok(b_false_rate(r))) {
        println!(
            "Recommended for {name}: {:.2}, the lowest threshold with the Banking77 false-hit \
             rate at or below {target:.0}% (hit rate {}, false-hit rate {}). No threshold brings \
             QQP's there; at {:.2} it is {}.\n",
            r.t,
            pct(ratio(r.b_hits, nb)),
            pct(b_false_rate(r)),
            r.t,
            pct(q_false_rate(r)),
        );
    } else {
        println!(
            "No recommendation for {name}: no threshold brings the Banking77 false-hit rate to \
             {target:.0}% or below.\n"
        );
    }
}

fn run(args: &Args) -> Result<(), String> {
    let data = load_data(&args.data)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "Banking77: {} queries; QQP: {} pairs ({} duplicates). Target false-hit rate <= {:.0}%.\n",
        data.banking.len(),
        data.qqp.len(),
        data.qqp.iter().filter(|q| q.2).count(),
        100.0 * TARGET
    );
    for name in &args.embedders {
        evaluate(name, args, &data, threads)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cache_eval: {e}");
            ExitCode::FAILURE
        }
    }
}
