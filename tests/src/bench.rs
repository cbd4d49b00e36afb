//! What the benchmark binaries of this crate (`clusterbench`, `poolerbench`) share: their flags
//! and their medians.

/// `--clients N --seconds N --rounds N`.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub clients: usize,
    pub seconds: u64,
    pub rounds: usize,
}

impl Options {
    /// The command line's flags over `defaults`.
    pub fn from_args(defaults: Options) -> Result<Options, String> {
        let mut options = defaults;
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number: usize = value
                .parse()
                .map_err(|_| format!("{flag} {value}: not a whole number"))?;
            match flag.as_str() {
                "--clients" => options.clients = number.max(1),
                "--seconds" => options.seconds = number.max(1) as u64,
                "--rounds" => options.rounds = number.max(1),
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        Ok(options)
    }
}

/// The median of `values` (the upper one of an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
