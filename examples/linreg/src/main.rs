//! linreg: least-squares linear regression from a CSV's feature columns to its last column.
//!
//! Reads the CSV named by its argument, or stdin when there is none (an optional header row,
//! then numbers; the last column is the target). Holds out `--test-fraction` of the rows,
//! chosen with `--seed` exactly as scikit-learn's `train_test_split(test_size=...,
//! random_state=...)` chooses them, fits the rest by the normal equations (Cholesky), and
//! reports the coefficients and the held-out mean squared error. `--json` prints one JSON
//! object with `intercept`, `coefficients`, `train_rows`, `test_rows` and `test_mse`.
//!
//! Gaps in the data (an empty field, `NA`, `NaN`, `?`...) are refused naming their line and
//! field unless `--missing drop` (drop incomplete rows) or `--missing mean` (fill a gap with
//! its column's mean over the training rows) says otherwise.
//!
//! On iris with the defaults (`--test-fraction 0.2 --seed 42`) it prints scikit-learn's
//! `LinearRegression` figures: test MSE 0.037114, intercept 0.252528, coefficients -0.116335,
//! -0.059778, 0.254914, 0.547596.
//!
//! Run it in Corral, from the repository root:
//!     $ scripts/build-guests
//!     $ cargo run --release -p corral -- run --dir-ro examples/data::/data target/wasm/linreg.wasm /data/iris.csv
//!     $ cargo run --release -p corral -- run --stdin examples/data/iris.csv target/wasm/linreg.wasm --json --seed 7
//! or natively:
//!     $ cargo run --release -p corral-example-linreg -- examples/data/iris.csv
//!     $ cargo run --release -p corral-example-linreg -- --json --seed 7 < examples/data/iris.csv

use corral_guest::args::Args;
use corral_guest::json::Object;
use corral_guest::{csv, host, input};

fn main() {
    if let Err(message) = run() {
        eprintln!("linreg: {message}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut args = Args::from_env();
    let as_json = args.flag("--json");
    let test_fraction: f64 = args.value("--test-fraction", 0.2)?;
    let seed: u64 = args.value("--seed", 42)?;
    let missing: csv::Missing = args.value("--missing", csv::Missing::Error)?;
    let path = args.positional();
    args.finish()?;

    let mut data = csv::parse_bytes(&input::read_bytes(path.as_deref())?)?;
    data.handle_missing(missing)?;
    // scikit-learn's rows; in file order, since the fit does not depend on their order.
    let (train, test) = data.split_in_row_order(test_fraction, seed)?;
    data.fill_means(&train)?;
    let p = data.features + 1;
    if train.len() < p {
        return Err(format!(
            "{} training rows cannot fit {} coefficients",
            train.len(),
            p
        ));
    }
    host::info(&format!(
        "fitting {} coefficients on {} rows",
        p,
        train.len()
    ));

    // Normal equations: (Z'Z) b = Z'y with Z = [1, x].
    let (mut ztz, zty) = normal_equations(&data, &train);
    let beta = solve_cholesky(&mut ztz, &zty, p).ok_or_else(|| {
        "the feature columns are collinear: least squares has no unique solution".to_string()
    })?;
    host::progress(train.len() as u64, train.len() as u64);

    let test_mse = if test.is_empty() {
        None
    } else {
        Some(squared_error(&data, &test, &beta) / test.len() as f64)
    };
    if let Some(mse) = test_mse {
        host::metric("test_mse", mse);
    }

    if as_json {
        let json = Object::new()
            .number("intercept", beta[0])
            .numbers("coefficients", &beta[1..])
            .integer("train_rows", train.len() as i64)
            .integer("test_rows", test.len() as i64)
            .optional_number("test_mse", test_mse)
            .finish();
        println!("{json}");
    } else {
        println!(
            "linreg: least squares of {} on {} features",
            data.target_name(),
            data.features
        );
        println!(
            "rows: {} train, {} test (test fraction {}, seed {})",
            train.len(),
            test.len(),
            test_fraction,
            seed
        );
        println!("{:<16}{:>14.6}", "intercept", beta[0]);
        for (name, b) in data.feature_names().iter().zip(&beta[1..]) {
            println!("{name:<16}{b:>14.6}");
        }
        match test_mse {
            Some(mse) => println!("{:<16}{:>14.6}", "test MSE", mse),
            None => println!("test MSE: no test rows"),
        }
    }
    Ok(())
}

// The passes over the rows are functions of their own, kept out of `run`: Cranelift, which
// compiles the wasm build, allocates registers a function at a time, and inlined into `run`
// among its many live values, the loops' accumulators would live on the stack.

/// The normal equations of least squares over the `train` rows, with an intercept column of
/// ones first: Z'Z (its lower triangle) and Z'y. Reports progress as it goes.
#[inline(never)]
fn normal_equations(data: &csv::Dataset, train: &[usize]) -> (Vec<f64>, Vec<f64>) {
    // Up to eight features, a copy compiled for the exact width, whose loops over the
    // coefficients unroll fully: they would otherwise run a few iterations per row, and in
    // wasm each iteration also pays a fuel check.
    match data.features {
        1 => normal_pass::<2>(data, train),
        2 => normal_pass::<3>(data, train),
        3 => normal_pass::<4>(data, train),
        4 => normal_pass::<5>(data, train),
        5 => normal_pass::<6>(data, train),
        6 => normal_pass::<7>(data, train),
        7 => normal_pass::<8>(data, train),
        8 => normal_pass::<9>(data, train),
        _ => normal_pass::<0>(data, train),
    }
}

/// [`normal_equations`] for `P` coefficients (`P` = 0: as many as `data` needs).
fn normal_pass<const P: usize>(data: &csv::Dataset, train: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let p = if P == 0 { data.features + 1 } else { P };
    let mut ztz = vec![0.0; p * p];
    let mut zty = vec![0.0; p];
    let mut z = vec![1.0; p];
    for (n, &i) in train.iter().enumerate() {
        z[1..].copy_from_slice(data.row(i));
        let y = data.y[i];
        for a in 0..p {
            zty[a] += z[a] * y;
            for b in 0..=a {
                ztz[a * p + b] += z[a] * z[b];
            }
        }
        if n % 65536 == 0 {
            host::progress(n as u64, train.len() as u64);
        }
    }
    (ztz, zty)
}

/// The sum of squared errors of the fit `beta` (intercept first) over the `rows`.
#[inline(never)]
fn squared_error(data: &csv::Dataset, rows: &[usize], beta: &[f64]) -> f64 {
    rows.iter()
        .map(|&i| {
            let prediction = beta[0]
                + data
                    .row(i)
                    .iter()
                    .zip(&beta[1..])
                    .map(|(x, b)| x * b)
                    .sum::<f64>();
            (data.y[i] - prediction) * (data.y[i] - prediction)
        })
        .sum()
}

/// Solves `A x = b` for symmetric positive definite `A` (lower triangle used, `n` x `n`,
/// row-major), overwriting `A` with its Cholesky factor. `None` when `A` is not positive
/// definite (collinear features).
fn solve_cholesky(a: &mut [f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let scale = (0..n).map(|i| a[i * n + i].abs()).fold(0.0, f64::max);
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d.is_nan() || d <= scale * 1e-12 {
            return None;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    // L y = b, then L' x = y.
    let mut y = vec![0.0; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * n + k] * y[k];
        }
        y[i] = s / a[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= a[k * n + i] * x[k];
        }
        x[i] = s / a[i * n + i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_known_system() {
        // [[4, 2], [2, 3]] x = [2, 1]  =>  x = [0.5, 0]
        let mut a = vec![4.0, 0.0, 2.0, 3.0];
        let x = solve_cholesky(&mut a, &[2.0, 1.0], 2).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
    }

    #[test]
    fn refuses_a_singular_system() {
        let mut a = vec![1.0, 0.0, 1.0, 1.0];
        assert!(solve_cholesky(&mut a, &[1.0, 1.0], 2).is_none());
    }

    /// `rows` rows of `features` pseudo-random features and a target.
    fn dataset(rows: usize, features: usize) -> csv::Dataset {
        let mut rng = corral_guest::rng::Rng::new(features as u64);
        csv::Dataset {
            names: (0..=features).map(|j| format!("c{j}")).collect(),
            features,
            x: (0..rows * features).map(|_| rng.next_f64() - 0.5).collect(),
            y: (0..rows).map(|_| rng.next_f64()).collect(),
            first_missing: None,
        }
    }

    #[test]
    fn every_width_gets_the_same_normal_equations() {
        // The copies compiled per width against the general one, bit for bit, and past the
        // widths that have copies, the general one against the definition.
        for features in 1..=8 {
            let data = dataset(100, features);
            let train: Vec<usize> = (0..100).step_by(3).collect();
            assert_eq!(
                normal_equations(&data, &train),
                normal_pass::<0>(&data, &train),
                "{features} features"
            );
        }
        let data = dataset(50, 11);
        let train: Vec<usize> = (0..50).collect();
        let (ztz, zty) = normal_equations(&data, &train);
        let z = |i: usize, a: usize| if a == 0 { 1.0 } else { data.row(i)[a - 1] };
        for a in 0..12 {
            let expected: f64 = train.iter().map(|&i| z(i, a) * data.y[i]).sum();
            assert!((zty[a] - expected).abs() < 1e-12, "Z'y[{a}]");
            for b in 0..=a {
                let expected: f64 = train.iter().map(|&i| z(i, a) * z(i, b)).sum();
                assert!((ztz[a * 12 + b] - expected).abs() < 1e-12, "Z'Z[{a}][{b}]");
            }
        }
    }
}
