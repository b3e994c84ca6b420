//! logreg: multinomial logistic (softmax) regression by batch gradient descent.
//!
//! Reads the CSV named by its argument, or stdin when there is none (an optional header row,
//! then numbers; the last column is the class index 0, 1, 2...). Holds out `--test-fraction`
//! of the rows, chosen with `--seed` as scikit-learn's `train_test_split` chooses them.
//! Standardises the features on the training rows, runs `--epochs` steps of gradient descent
//! on the mean cross-entropy with `--learning-rate`, and reports the loss and the train and
//! test accuracy. `--json` prints one JSON object with `classes`, `epochs`, `loss`,
//! `train_accuracy`, `test_accuracy`, `train_rows` and `test_rows`. The softmax uses `corral_guest::math::exp`, so wasm and native
//! builds print the same digits.
//!
//! Gaps in the data (an empty field, `NA`, `NaN`, `?`...) are refused naming their line and
//! field unless `--missing drop` (drop incomplete rows) or `--missing mean` (fill a gap with
//! its column's mean over the training rows) says otherwise.
//!
//! Run it in Corral, from the repository root:
//!     $ scripts/build-guests
//!     $ cargo run --release -p corral -- run --dir-ro examples/data::/data target/wasm/logreg.wasm /data/iris.csv
//!     $ cargo run --release -p corral -- run --stdin examples/data/iris.csv target/wasm/logreg.wasm --json --epochs 100
//! or natively:
//!     $ cargo run --release -p corral-example-logreg -- examples/data/iris.csv
//!     $ cargo run --release -p corral-example-logreg -- --json --epochs 100 < examples/data/iris.csv

use corral_guest::args::Args;
use corral_guest::json::Object;
use corral_guest::{csv, host, input, math};

fn main() {
    if let Err(message) = run() {
        eprintln!("logreg: {message}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut args = Args::from_env();
    let as_json = args.flag("--json");
    let epochs: usize = args.value("--epochs", 300)?;
    let learning_rate: f64 = args.value("--learning-rate", 0.5)?;
    let test_fraction: f64 = args.value("--test-fraction", 0.2)?;
    let seed: u64 = args.value("--seed", 42)?;
    let missing: csv::Missing = args.value("--missing", csv::Missing::Error)?;
    let path = args.positional();
    args.finish()?;
    if !learning_rate.is_finite() || learning_rate <= 0.0 {
        return Err(format!("--learning-rate {learning_rate} must be positive"));
    }

    let mut data = csv::parse_bytes(&input::read_bytes(path.as_deref())?)?;
    data.handle_missing(missing)?;
    let labels = csv::class_labels(&data.y)?;
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    if classes < 2 {
        return Err("the target has a single class: nothing to separate".into());
    }
    // scikit-learn's rows; in file order, since the fit does not depend on their order.
    let (train, test) = data.split_in_row_order(test_fraction, seed)?;
    data.fill_means(&train)?;
    if train.is_empty() {
        return Err("no training rows".into());
    }

    // Standardise with the training rows' mean and deviation.
    let f = data.features;
    let mut mean = vec![0.0; f];
    let mut std = vec![0.0; f];
    for &i in &train {
        for (m, x) in mean.iter_mut().zip(data.row(i)) {
            *m += x;
        }
    }
    mean.iter_mut().for_each(|m| *m /= train.len() as f64);
    for &i in &train {
        for ((s, m), x) in std.iter_mut().zip(&mean).zip(data.row(i)) {
            *s += (x - m) * (x - m);
        }
    }
    std.iter_mut().for_each(|s| {
        *s = if *s > 0.0 {
            (*s / train.len() as f64).sqrt()
        } else {
            1.0
        }
    });
    let standard = Standardise { mean, std };
    let z = |i: usize, out: &mut [f64]| standard.row::<0>(data.row(i), out);

    let p = f + 1;
    let mut weights = vec![0.0; classes * p];
    let mut gradient = vec![0.0; classes * p];
    let mut loss = 0.0;
    for epoch in 0..epochs {
        loss = gradient_pass(&data, &train, &labels, &standard, &weights, &mut gradient);
        loss /= train.len() as f64;
        let step = learning_rate / train.len() as f64;
        for (w, g) in weights.iter_mut().zip(&gradient) {
            *w -= step * g;
        }
        host::progress(epoch as u64 + 1, epochs as u64);
        host::metric("loss", loss);
    }

    let accuracy = |rows: &[usize]| -> Option<f64> {
        if rows.is_empty() {
            return None;
        }
        let mut row = vec![0.0; p];
        let mut probabilities = vec![0.0; classes];
        let correct = rows
            .iter()
            .filter(|&&i| {
                z(i, &mut row);
                softmax::<0>(&weights, &row, &mut probabilities);
                argmax(&probabilities) == labels[i]
            })
            .count();
        Some(correct as f64 / rows.len() as f64)
    };
    let train_accuracy = accuracy(&train);
    let test_accuracy = accuracy(&test);

    if as_json {
        let json = Object::new()
            .integer("classes", classes as i64)
            .integer("epochs", epochs as i64)
            .number("loss", loss)
            .optional_number("train_accuracy", train_accuracy)
            .optional_number("test_accuracy", test_accuracy)
            .integer("train_rows", train.len() as i64)
            .integer("test_rows", test.len() as i64)
            .finish();
        println!("{json}");
    } else {
        println!(
            "logreg: softmax regression of {} ({} classes) on {} features",
            data.target_name(),
            classes,
            f
        );
        println!(
            "rows: {} train, {} test (test fraction {}, seed {})",
            train.len(),
            test.len(),
            test_fraction,
            seed
        );
        println!("epochs: {epochs}, learning rate {learning_rate}");
        println!("{:<16}{:>10.6}", "loss", loss);
        for (name, value) in [
            ("train accuracy", train_accuracy),
            ("test accuracy", test_accuracy),
        ] {
            match value {
                Some(a) => println!("{name:<16}{a:>10.6}"),
                None => println!("{name:<16}{:>10}", "n/a"),
            }
        }
    }
    Ok(())
}

/// Features shifted by the training rows' mean and scaled by their deviation, after a
/// leading 1 for the intercept.
struct Standardise {
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl Standardise {
    /// Writes the standardised `x` into `out` (its `P` = `x.len() + 1` values, or any number
    /// when `P` is 0; see [`gradient_pass`]).
    #[inline]
    fn row<const P: usize>(&self, x: &[f64], out: &mut [f64]) {
        let f = if P == 0 { x.len() } else { P - 1 };
        out[0] = 1.0;
        for j in 0..f {
            out[j + 1] = (x[j] - self.mean[j]) / self.std[j];
        }
    }
}

/// One pass of gradient descent over the `train` rows: sets `gradient` to the cross-entropy
/// loss's gradient (summed over the rows) at `weights`, and answers the summed loss. A
/// function of its own, kept out of `run`: Cranelift, which compiles the wasm build,
/// allocates registers a function at a time, and inlined among `run`'s many live values the
/// loop's accumulators would live on the stack.
#[inline(never)]
fn gradient_pass(
    data: &csv::Dataset,
    train: &[usize],
    labels: &[usize],
    standard: &Standardise,
    weights: &[f64],
    gradient: &mut [f64],
) -> f64 {
    // Up to eight features, a copy compiled for the exact width, whose loops over the
    // coefficients unroll fully: they would otherwise run a few iterations per class and
    // row, and in wasm each iteration also pays a fuel check.
    let pass: GradientPass = match data.features {
        1 => gradient_rows::<2>,
        2 => gradient_rows::<3>,
        3 => gradient_rows::<4>,
        4 => gradient_rows::<5>,
        5 => gradient_rows::<6>,
        6 => gradient_rows::<7>,
        7 => gradient_rows::<8>,
        8 => gradient_rows::<9>,
        _ => gradient_rows::<0>,
    };
    pass(data, train, labels, standard, weights, gradient)
}

/// The signature of [`gradient_pass`] and its copies per width.
type GradientPass = fn(&csv::Dataset, &[usize], &[usize], &Standardise, &[f64], &mut [f64]) -> f64;

/// [`gradient_pass`] for `P` coefficients per class (`P` = 0: as many as `data` needs).
fn gradient_rows<const P: usize>(
    data: &csv::Dataset,
    train: &[usize],
    labels: &[usize],
    standard: &Standardise,
    weights: &[f64],
    gradient: &mut [f64],
) -> f64 {
    let p = if P == 0 { data.features + 1 } else { P };
    let mut row = vec![0.0; p];
    let mut probabilities = vec![0.0; gradient.len() / p];
    gradient.iter_mut().for_each(|g| *g = 0.0);
    let mut loss = 0.0;
    for &i in train {
        standard.row::<P>(data.row(i), &mut row);
        softmax::<P>(weights, &row, &mut probabilities);
        // A comparison, not `f64::max`, which wasm32 makes a call to libm's `fmax`.
        let likelihood = probabilities[labels[i]];
        loss -= math::ln(if likelihood > 1e-300 {
            likelihood
        } else {
            1e-300
        });
        for (k, pk) in probabilities.iter().enumerate() {
            let error = pk - if k == labels[i] { 1.0 } else { 0.0 };
            for (g, x) in gradient[k * p..(k + 1) * p].iter_mut().zip(&row[..p]) {
                *g += error * x;
            }
        }
    }
    loss
}

/// Class probabilities for one standardised row (of `P` values, or any number when `P` is 0;
/// see [`gradient_pass`]).
#[inline]
fn softmax<const P: usize>(weights: &[f64], row: &[f64], out: &mut [f64]) {
    let p = if P == 0 { row.len() } else { P };
    for (k, o) in out.iter_mut().enumerate() {
        *o = weights[k * p..(k + 1) * p]
            .iter()
            .zip(&row[..p])
            .map(|(w, x)| w * x)
            .sum();
    }
    // The logits are finite, so a plain comparison will do: `f64::max` is a call to libm's
    // `fmax` in wasm32-wasi, which costs as much here as the rest of the loop.
    let max = out
        .iter()
        .fold(f64::NEG_INFINITY, |m, &o| if o > m { o } else { m });
    let mut sum = 0.0;
    for o in out.iter_mut() {
        *o = math::exp(*o - max);
        sum += *o;
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_favours_the_larger_logit() {
        let mut out = [0.0; 2];
        softmax::<0>(&[0.0, 0.0, 1.0, 0.0], &[1.0, 0.0], &mut out);
        assert!((out[0] + out[1] - 1.0).abs() < 1e-15);
        assert_eq!(argmax(&out), 1);
    }

    /// A gradient pass over `rows` pseudo-random rows of `features` features, 3 classes:
    /// through `pass`, answering (loss, gradient).
    fn a_pass(
        rows: usize,
        features: usize,
        pass: GradientPass,
    ) -> (f64, Vec<f64>, csv::Dataset, Standardise, Vec<f64>) {
        let mut rng = corral_guest::rng::Rng::new(features as u64);
        let data = csv::Dataset {
            names: (0..=features).map(|j| format!("c{j}")).collect(),
            features,
            x: (0..rows * features).map(|_| rng.next_f64() * 4.0).collect(),
            y: (0..rows).map(|i| (i % 3) as f64).collect(),
            first_missing: None,
        };
        let standard = Standardise {
            mean: (0..features).map(|_| rng.next_f64()).collect(),
            std: (0..features).map(|_| 0.5 + rng.next_f64()).collect(),
        };
        let weights: Vec<f64> = (0..3 * (features + 1))
            .map(|_| rng.next_f64() - 0.5)
            .collect();
        let labels = csv::class_labels(&data.y).unwrap();
        let train: Vec<usize> = (0..rows).filter(|i| i % 4 != 1).collect();
        let mut gradient = vec![f64::NAN; weights.len()];
        let loss = pass(&data, &train, &labels, &standard, &weights, &mut gradient);
        (loss, gradient, data, standard, weights)
    }

    #[test]
    fn every_width_gets_the_same_gradient() {
        // The copies compiled per width against the general one, bit for bit.
        for features in 1..=8 {
            let (loss, gradient, ..) = a_pass(60, features, gradient_pass);
            let (general_loss, general_gradient, ..) = a_pass(60, features, gradient_rows::<0>);
            assert_eq!(
                loss.to_bits(),
                general_loss.to_bits(),
                "{features} features"
            );
            assert_eq!(gradient, general_gradient, "{features} features");
        }
        // Past the widths that have copies, the general one against the definition: the sum
        // over rows of (probability - [class is the label]) * standardised features.
        let (loss, gradient, data, standard, weights) = a_pass(40, 11, gradient_pass);
        let labels = csv::class_labels(&data.y).unwrap();
        let (mut expected_loss, mut expected) = (0.0, vec![0.0; 36]);
        for i in (0..40).filter(|i| i % 4 != 1) {
            let z: Vec<f64> = std::iter::once(1.0)
                .chain((0..11).map(|j| (data.row(i)[j] - standard.mean[j]) / standard.std[j]))
                .collect();
            let mut probabilities = [0.0; 3];
            softmax::<0>(&weights, &z, &mut probabilities);
            expected_loss -= probabilities[labels[i]].ln();
            for k in 0..3 {
                let error = probabilities[k] - f64::from(u8::from(k == labels[i]));
                for j in 0..12 {
                    expected[k * 12 + j] += error * z[j];
                }
            }
        }
        assert!(
            (loss - expected_loss).abs() < 1e-9,
            "{loss} {expected_loss}"
        );
        for (g, e) in gradient.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-12, "{g} {e}");
        }
    }
}
