//! kmeans: k-means clustering (k-means++ seeding, then Lloyd's iterations).
//!
//! Reads the CSV named by its argument, or stdin when there is none (an optional header row,
//! then numbers). Clusters the rows on the feature columns (every column but the last) into
//! `--k` clusters, seeded with `--seed`, iterating until no row changes cluster or
//! `--max-iter` is reached. Reports the inertia (sum of squared distances to the centres), the
//! cluster sizes and centres, and the purity of the clusters against the last column taken as
//! a label. `--json` prints one JSON object with `k`, `iterations`, `converged`, `inertia`,
//! `sizes`, `centers` and `purity`.
//!
//! Gaps in the data (an empty field, `NA`, `NaN`, `?`...) are refused naming their line and
//! field unless `--missing drop` (drop incomplete rows) or `--missing mean` (fill a gap with
//! its column's mean over all rows) says otherwise.
//!
//! Run it in Corral, from the repository root:
//!     $ scripts/build-guests
//!     $ cargo run --release -p corral -- run --dir-ro examples/data::/data target/wasm/kmeans.wasm /data/iris.csv --k 3
//!     $ cargo run --release -p corral -- run --stdin examples/data/iris.csv target/wasm/kmeans.wasm --json --k 4 --seed 9
//! or natively:
//!     $ cargo run --release -p corral-example-kmeans -- examples/data/iris.csv --k 3
//!     $ cargo run --release -p corral-example-kmeans -- --json --k 4 --seed 9 < examples/data/iris.csv

use corral_guest::args::Args;
use corral_guest::json::{self, Object};
use corral_guest::rng::Rng;
use corral_guest::{csv, host, input};

fn main() {
    if let Err(message) = run() {
        eprintln!("kmeans: {message}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut args = Args::from_env();
    let as_json = args.flag("--json");
    let k: usize = args.value("--k", 3)?;
    let seed: u64 = args.value("--seed", 42)?;
    let max_iter: usize = args.value("--max-iter", 100)?;
    let missing: csv::Missing = args.value("--missing", csv::Missing::Error)?;
    let path = args.positional();
    args.finish()?;

    let mut data = csv::parse_bytes(&input::read_bytes(path.as_deref())?)?;
    data.handle_missing(missing)?;
    // No split: a gap is filled with its column's mean over every row.
    let every: Vec<usize> = (0..data.rows()).collect();
    data.fill_means(&every)?;
    let (n, f) = (data.rows(), data.features);
    if k == 0 || k > n {
        return Err(format!(
            "--k {k} must be between 1 and the number of rows ({n})"
        ));
    }

    let Clustering {
        centers,
        assignment,
        iterations,
        converged,
        inertia,
    } = cluster(&data, k, seed, max_iter);
    let mut sizes = vec![0usize; k];
    assignment.iter().for_each(|&c| sizes[c] += 1);
    let purity = purity(&assignment, &data.y, k);
    host::metric("inertia", inertia);

    if as_json {
        let rows: Vec<String> = centers.chunks(f).map(json::array).collect();
        let centers_json = format!("[{}]", rows.join(","));
        let sizes_f: Vec<f64> = sizes.iter().map(|&s| s as f64).collect();
        let json = Object::new()
            .integer("k", k as i64)
            .integer("iterations", iterations as i64)
            .boolean("converged", converged)
            .number("inertia", inertia)
            .numbers("sizes", &sizes_f)
            .raw("centers", &centers_json)
            .number("purity", purity)
            .finish();
        println!("{json}");
    } else {
        println!("kmeans: k={k} on {n} rows x {f} features (seed {seed})");
        if converged {
            println!("converged after {iterations} iterations");
        } else {
            println!("stopped at --max-iter {max_iter} before converging");
        }
        println!("inertia {inertia:.6}");
        for c in 0..k {
            let center: Vec<String> = centers[c * f..(c + 1) * f]
                .iter()
                .map(|v| format!("{v:.4}"))
                .collect();
            println!(
                "cluster {c}: {:>7} rows, centre [{}]",
                sizes[c],
                center.join(", ")
            );
        }
        println!("purity against {}: {purity:.6}", data.target_name());
    }
    Ok(())
}

/// What [`cluster`] found.
struct Clustering {
    /// The centres, row-major.
    centers: Vec<f64>,
    /// Each row's cluster.
    assignment: Vec<usize>,
    /// Lloyd's iterations run.
    iterations: usize,
    /// Whether the last iteration moved no row.
    converged: bool,
    /// The sum over the rows of the squared distance to their centre.
    inertia: f64,
}

/// k-means of `data`'s rows into `k` clusters: k-means++ seeding, then Lloyd's iterations
/// until no row changes cluster or `max_iter` have run.
fn cluster(data: &csv::Dataset, k: usize, seed: u64, max_iter: usize) -> Clustering {
    // Rows of up to eight features get a copy of the whole clustering compiled for their
    // exact width, whose loops over the features unroll fully: they would otherwise run a
    // few iterations per centre and row, and in wasm each iteration also pays a fuel check.
    match data.features {
        1 => cluster_rows::<1>(data, k, seed, max_iter),
        2 => cluster_rows::<2>(data, k, seed, max_iter),
        3 => cluster_rows::<3>(data, k, seed, max_iter),
        4 => cluster_rows::<4>(data, k, seed, max_iter),
        5 => cluster_rows::<5>(data, k, seed, max_iter),
        6 => cluster_rows::<6>(data, k, seed, max_iter),
        7 => cluster_rows::<7>(data, k, seed, max_iter),
        8 => cluster_rows::<8>(data, k, seed, max_iter),
        _ => cluster_rows::<0>(data, k, seed, max_iter),
    }
}

/// [`cluster`] for rows of `F` features (`F` = 0: as many as `data` has).
fn cluster_rows<const F: usize>(
    data: &csv::Dataset,
    k: usize,
    seed: u64,
    max_iter: usize,
) -> Clustering {
    let mut centers = seed_centers::<F>(data, k, &mut Rng::new(seed));
    let mut assignment = vec![usize::MAX; data.rows()];
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iter {
        iterations += 1;
        let changed = lloyd_step::<F>(&mut centers, data, &mut assignment);
        host::progress(iterations as u64, max_iter as u64);
        if changed == 0 {
            converged = true;
            break;
        }
    }
    let inertia = inertia::<F>(&centers, data);
    Clustering {
        centers,
        assignment,
        iterations,
        converged,
        inertia,
    }
}

/// The features per row: `F`, or `data`'s count when `F` is 0.
#[inline(always)]
fn width<const F: usize>(data: &csv::Dataset) -> usize {
    if F == 0 {
        data.features
    } else {
        F
    }
}

// The passes over the rows are functions of their own, kept out of their caller: Cranelift,
// which compiles the wasm build, allocates registers a function at a time, and inlined among
// the caller's many live values, the loops' accumulators would live on the stack.

/// One round of Lloyd's algorithm: assigns each row to its nearest centre, then moves each
/// centre to its cluster's mean (an emptied cluster keeps its centre). Answers how many rows
/// changed cluster.
fn lloyd_step<const F: usize>(
    centers: &mut [f64],
    data: &csv::Dataset,
    assignment: &mut [usize],
) -> usize {
    let changed = assign::<F>(centers, data, assignment);
    move_centers::<F>(centers, data, assignment);
    changed
}

/// Assigns each row to its nearest centre; answers how many rows changed cluster.
fn assign<const F: usize>(centers: &[f64], data: &csv::Dataset, assignment: &mut [usize]) -> usize {
    // One copy of the pass per count of centres left over by the groups of four (see
    // `nearest`).
    match centers.len() / width::<F>(data) % 4 {
        0 => assign_rows::<F, 0>(centers, data, assignment),
        1 => assign_rows::<F, 1>(centers, data, assignment),
        2 => assign_rows::<F, 2>(centers, data, assignment),
        _ => assign_rows::<F, 3>(centers, data, assignment),
    }
}

/// [`assign`] for rows of `F` features and a count of centres that is `R` modulo 4.
#[inline(never)]
fn assign_rows<const F: usize, const R: usize>(
    centers: &[f64],
    data: &csv::Dataset,
    assignment: &mut [usize],
) -> usize {
    let f = width::<F>(data);
    let mut changed = 0;
    for (slot, row) in assignment.iter_mut().zip(data.x.chunks_exact(f)) {
        let (best, _) = nearest::<R>(centers, f, row);
        if *slot != best {
            *slot = best;
            changed += 1;
        }
    }
    changed
}

/// Moves each centre to the mean of its cluster's rows; an emptied cluster keeps its centre.
#[inline(never)]
fn move_centers<const F: usize>(centers: &mut [f64], data: &csv::Dataset, assignment: &[usize]) {
    let f = width::<F>(data);
    let k = centers.len() / f;
    let mut sums = vec![0.0; k * f];
    let mut counts = vec![0usize; k];
    for (&c, row) in assignment.iter().zip(data.x.chunks_exact(f)) {
        counts[c] += 1;
        for (s, x) in sums[c * f..(c + 1) * f].iter_mut().zip(row) {
            *s += x;
        }
    }
    for c in 0..k {
        if counts[c] > 0 {
            for j in 0..f {
                centers[c * f + j] = sums[c * f + j] / counts[c] as f64;
            }
        }
    }
}

/// The sum over the rows of the squared distance to the nearest centre.
#[inline(never)]
fn inertia<const F: usize>(centers: &[f64], data: &csv::Dataset) -> f64 {
    let f = width::<F>(data);
    data.x
        .chunks_exact(f)
        .map(|row| nearest_any(centers, f, row).1)
        .sum()
}

/// k-means++: the first centre uniformly, each next one with probability proportional to the
/// squared distance to the nearest centre chosen so far.
#[inline(never)]
fn seed_centers<const F: usize>(data: &csv::Dataset, k: usize, rng: &mut Rng) -> Vec<f64> {
    let (n, f) = (data.rows(), width::<F>(data));
    let mut centers = Vec::with_capacity(k * f);
    centers.extend_from_slice(data.row(rng.below(n)));
    let mut distance: Vec<f64> = data
        .x
        .chunks_exact(f)
        .map(|row| squared(row, &centers[..f]))
        .collect();
    while centers.len() < k * f {
        let total: f64 = distance.iter().sum();
        let pick = if total > 0.0 {
            let mut target = rng.next_f64() * total;
            let mut chosen = n - 1;
            for (i, d) in distance.iter().enumerate() {
                if target < *d {
                    chosen = i;
                    break;
                }
                target -= d;
            }
            chosen
        } else {
            rng.below(n)
        };
        let start = centers.len();
        centers.extend_from_slice(data.row(pick));
        for (row, d) in data.x.chunks_exact(f).zip(distance.iter_mut()) {
            // A comparison, not `f64::min`, which wasm32 makes a call to libm's `fmin`.
            let to_new = squared(row, &centers[start..start + f]);
            if to_new < *d {
                *d = to_new;
            }
        }
    }
    centers
}

/// The nearest centre to `x` and the squared distance to it (the first such centre, on a
/// tie), for a count of centres that is `R` modulo 4.
///
/// The centres are taken four at a time, the loop over the four unrolled, and the last `R`
/// one by one in unrolled code. In wasm with fuel metering, the check at every loop head may
/// call out of the guest, which would clobber every float register; Cranelift then keeps the
/// floats that live across the loop head (the row, the best distance so far) on the stack,
/// storing and reloading them on every turn. A loop per centre paid that for each centre
/// (with it, kmeans in wasm ran at 1.5x its native build); a loop per four centres pays it
/// once per four, and for `k` < 4 there is no loop at all.
#[inline(always)]
fn nearest<const R: usize>(centers: &[f64], f: usize, x: &[f64]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    let split = centers.len() - R * f;
    let (fours, rest) = centers.split_at(split);
    for (g, four) in fours.chunks_exact(4 * f).enumerate() {
        for (c, center) in four.chunks_exact(f).enumerate() {
            let d = squared(x, center);
            if d < best.1 {
                best = (4 * g + c, d);
            }
        }
    }
    for (c, center) in rest.chunks_exact(f).enumerate() {
        let d = squared(x, center);
        if d < best.1 {
            best = (split / f + c, d);
        }
    }
    best
}

/// [`nearest`] for any count of centres: a branch per call on which copy serves.
#[inline(always)]
fn nearest_any(centers: &[f64], f: usize, x: &[f64]) -> (usize, f64) {
    match centers.len() / f % 4 {
        0 => nearest::<0>(centers, f, x),
        1 => nearest::<1>(centers, f, x),
        2 => nearest::<2>(centers, f, x),
        _ => nearest::<3>(centers, f, x),
    }
}

/// The squared distance between two points. Four coordinates a step, added one by one into a
/// single sum: the same result as a loop over the coordinates, with a quarter of its branches
/// (in wasm, each loop iteration also pays a fuel check).
#[inline(always)]
fn squared(a: &[f64], b: &[f64]) -> f64 {
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let (a_rest, b_rest) = (a4.remainder(), b4.remainder());
    let mut sum = 0.0;
    for (x, y) in a4.zip(b4) {
        sum += (x[0] - y[0]) * (x[0] - y[0]);
        sum += (x[1] - y[1]) * (x[1] - y[1]);
        sum += (x[2] - y[2]) * (x[2] - y[2]);
        sum += (x[3] - y[3]) * (x[3] - y[3]);
    }
    for (x, y) in a_rest.iter().zip(b_rest) {
        sum += (x - y) * (x - y);
    }
    sum
}

/// The fraction of rows whose label is the most common label of their cluster.
fn purity(assignment: &[usize], labels: &[f64], k: usize) -> f64 {
    let mut counts: Vec<Vec<(f64, usize)>> = vec![Vec::new(); k];
    for (&c, &label) in assignment.iter().zip(labels) {
        match counts[c].iter_mut().find(|(l, _)| *l == label) {
            Some(entry) => entry.1 += 1,
            None => counts[c].push((label, 1)),
        }
    }
    let majority: usize = counts
        .iter()
        .map(|c| c.iter().map(|(_, n)| *n).max().unwrap_or(0))
        .sum();
    majority as f64 / assignment.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purity_counts_majority_labels() {
        assert_eq!(purity(&[0, 0, 1, 1], &[5.0, 5.0, 6.0, 7.0], 2), 0.75);
    }

    #[test]
    fn every_width_gets_the_same_clustering() {
        // The copies compiled per width against the general one, bit for bit, for counts of
        // centres below, at and past a group of four.
        for features in 1..=8 {
            let mut rng = Rng::new(features as u64);
            let data = csv::Dataset {
                names: (0..=features).map(|j| format!("c{j}")).collect(),
                features,
                x: (0..300 * features)
                    .map(|i| rng.next_f64() + (i / features % 3) as f64)
                    .collect(),
                y: (0..300).map(|i| (i % 3) as f64).collect(),
                first_missing: None,
            };
            for k in 1..=9 {
                let a = cluster(&data, k, 7, 50);
                let b = cluster_rows::<0>(&data, k, 7, 50);
                assert_eq!(a.centers, b.centers, "{features} features, k {k}");
                assert_eq!(a.assignment, b.assignment);
                assert_eq!((a.iterations, a.converged), (b.iterations, b.converged));
                assert_eq!(a.inertia.to_bits(), b.inertia.to_bits());
            }
        }
    }

    #[test]
    fn nearest_picks_the_closest_centre() {
        assert_eq!(
            nearest::<2>(&[0.0, 0.0, 10.0, 10.0], 2, &[9.0, 9.0]),
            (1, 2.0)
        );
    }

    #[test]
    fn nearest_is_a_scan_of_the_centres_in_order_for_every_count() {
        // The groups of four and the copies per remainder against the definition: the first
        // centre at the least squared distance. Every third centre repeats the one before it,
        // so that ties occur, within a group of four and across groups.
        let mut rng = Rng::new(11);
        for f in 1..=5 {
            for k in 1..=11 {
                let mut centers: Vec<f64> = Vec::with_capacity(k * f);
                for c in 0..k {
                    if c % 3 == 2 {
                        centers.extend_from_within((c - 1) * f..c * f);
                    } else {
                        centers.extend((0..f).map(|_| rng.next_f64() * 4.0));
                    }
                }
                for _ in 0..50 {
                    let x: Vec<f64> = (0..f).map(|_| rng.next_f64() * 4.0).collect();
                    let mut scan = (0, f64::INFINITY);
                    for (c, center) in centers.chunks_exact(f).enumerate() {
                        let d = squared(&x, center);
                        if d < scan.1 {
                            scan = (c, d);
                        }
                    }
                    assert_eq!(nearest_any(&centers, f, &x), scan, "f {f}, k {k}");
                }
                // A row on a repeated centre: the first of the two.
                if k >= 3 {
                    assert_eq!(nearest_any(&centers, f, &centers[f..2 * f]).0, 1);
                }
            }
        }
    }
}
