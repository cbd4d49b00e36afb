//! Renders BENCHMARKS.md from a finished `scripts/bench.sh` run: the figures it recorded in
//! `results.env`, the commands in `commands.txt`, and the profiles and plans next to them.
//!
//! ```sh
//! report --out target/bench/20261124T161407Z [--root .] [--report BENCHMARKS.md]
//! report --out DIR --missed flash      # exit status 0 when that target was measured and missed
//! ```
//!
//! Every target is stated once, in `targets()`: what is measured, the baseline it is divided by,
//! the goal, and the notes quoted when it is missed. A scenario the run did not measure (an older
//! run directory) is reported as not measured rather than failing the report.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const DASH: &str = "—";
/// Seconds of each profile's re-run (scripts/bench.sh, PROFILE_SECONDS).
const PROFILE_SECONDS: u32 = 8;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(path) => {
            eprintln!("wrote {}", path.display());
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("report: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<PathBuf> {
    let mut out = None;
    let mut root = PathBuf::from(".");
    let mut report = None;
    let mut missed = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(value)),
            "--root" => root = value.into(),
            "--report" => report = Some(PathBuf::from(value)),
            "--missed" => missed = Some(value),
            _ => return Err(format!("unknown argument {flag:?}").into()),
        }
    }
    let root = std::fs::canonicalize(root)?;
    let out = std::fs::canonicalize(out.ok_or("--out DIR is required")?)?;
    let report = report.unwrap_or_else(|| root.join("BENCHMARKS.md"));
    let env = std::fs::read_to_string(out.join("results.env"))
        .map_err(|err| format!("{}/results.env: {err}", out.display()))?;
    let mut values = parse_env(&env);
    // The RSS target is stated in MiB; the run records KiB.
    if let Some(kb) = values
        .get("rss_cached_hwm_kb")
        .and_then(|v| v.parse::<f64>().ok())
    {
        values.insert("rss_cached_hwm_mib".into(), format!("{:.2}", kb / 1024.0));
    }
    // A flash-sale run's orders per second until its last sale: after the sell-out every client
    // only answers "sold out", so the whole run's rate says little about selling.
    for name in ["pg_flash", "pg_flash_cte", "pg_flash_quiet", "flash"] {
        let num = |key: &str| {
            values
                .get(&format!("{name}_{key}"))
                .and_then(|v| v.parse::<f64>().ok())
        };
        if let (Some(orders), Some(seconds)) = (num("orders"), num("last_sale_s"))
            && seconds > 0.0
        {
            values.insert(
                format!("{name}_sale_rate"),
                format!("{:.1}", orders / seconds),
            );
        }
    }
    take_median_rounds(&mut values);
    let run = Run { values, out, root };
    if let Some(id) = missed {
        // For scripts/bench.sh: whether to profile a target, decided by the same table.
        let targets = targets(&run);
        let target = targets
            .iter()
            .find(|target| target.id == id)
            .ok_or_else(|| format!("no target {id:?}"))?;
        let missed = target.outcome(&run).and_then(|outcome| outcome.met) == Some(false);
        std::process::exit(if missed { 0 } else { 1 });
    }
    let text = render(&run)?;
    let tmp = report.with_extension("md.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &report)?;
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// The recorded figures

/// `KEY=VALUE` lines as bash's `printf %q` wrote them; a key recorded twice keeps its last value.
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), unquote(value)))
        .collect()
}

/// Undoes `printf %q`: backslash escapes, '…' quoting, and $'…' with C escapes.
fn unquote(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    out.push(c);
                }
            }
            '$' if chars.peek() == Some(&'\'') => {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\'' => break,
                        '\\' => match chars.next() {
                            Some('n') => out.push('\n'),
                            Some('t') => out.push('\t'),
                            Some(other) => out.push(other),
                            None => {}
                        },
                        other => out.push(other),
                    }
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Scenarios measured in rounds that alternate with their baselines (`BENCH_ROUNDS`), as
/// (scenario, baseline, the baseline's rate: `rps` for wrk, `tps` for pgbench, the name the
/// baseline's median round is copied to). A baseline shared by two scenarios (`/health` in
/// each round of scenario 2 at -c32) is copied under a name of its own for the second.
const PAIRED_ROUNDS: [(&str, &str, &str, &str); 4] = [
    ("s1", "pg_get_user", "tps", "pg_get_user"),
    ("s2", "health", "rps", "health"),
    ("s2_few", "health", "rps", "health_few"),
    ("s2_high", "health_high", "rps", "health_high"),
];

/// For each paired scenario, the round whose ratio is the median of the rounds' ratios: its
/// figures (`s1_r2_rps`, `pg_get_user_r2_tps`, …) are copied to the scenario's own names
/// (`s1_rps`, `pg_get_user_tps`, …), so the target's ratio is that median and the tables show
/// the round it came from. The ratios of all rounds, in run order, go to `<scenario>_round_ratios`.
fn take_median_rounds(values: &mut HashMap<String, String>) {
    let rounds: usize = values
        .get("cfg_rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let num = |values: &HashMap<String, String>, key: String| {
        values.get(&key).and_then(|v| v.trim().parse::<f64>().ok())
    };
    for (name, baseline, baseline_rate, baseline_as) in PAIRED_ROUNDS {
        let mut ratios: Vec<(f64, usize)> = (1..=rounds)
            .filter_map(|round| {
                let a = num(values, format!("{name}_r{round}_rps"))?;
                let b = num(values, format!("{baseline}_r{round}_{baseline_rate}"))?;
                (b > 0.0).then_some((a / b, round))
            })
            .collect();
        if ratios.is_empty() {
            continue;
        }
        let in_order: Vec<String> = ratios.iter().map(|(r, _)| ratio_text(*r)).collect();
        ratios.sort_by(|x, y| x.0.total_cmp(&y.0));
        let (_, median) = ratios[(ratios.len() - 1) / 2];
        for (measured, copied_as) in [(name, name), (baseline, baseline_as)] {
            let prefix = format!("{measured}_r{median}_");
            let copies: Vec<(String, String)> = values
                .iter()
                .filter_map(|(key, value)| {
                    let rest = key.strip_prefix(&prefix)?;
                    Some((format!("{copied_as}_{rest}"), value.clone()))
                })
                .collect();
            values.extend(copies);
        }
        values.insert(format!("{name}_round_ratios"), in_order.join(", "));
        values.insert(format!("{name}_round"), median.to_string());
    }
}

struct Run {
    values: HashMap<String, String>,
    out: PathBuf,
    root: PathBuf,
}

impl Run {
    /// The recorded value, or a dash.
    fn get(&self, key: &str) -> String {
        match self.values.get(key) {
            Some(value) if !value.is_empty() => value.clone(),
            _ => DASH.to_owned(),
        }
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.values.get(key)?.trim().parse().ok()
    }

    fn cfg(&self, key: &str) -> String {
        self.get(&format!("cfg_{key}"))
    }

    /// A recorded size in KiB, as MiB.
    fn mib(&self, key: &str) -> String {
        self.num(key)
            .map_or_else(|| DASH.to_owned(), |kb| format!("{:.2}", kb / 1024.0))
    }

    fn measured(&self, name: &str) -> bool {
        self.values.contains_key(&format!("{name}_rps"))
            || self.values.contains_key(&format!("{name}_tps"))
    }

    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.out.join(name)).ok()
    }

    fn note(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join("bench/notes").join(name)).unwrap_or_default()
    }

    /// The run directory as the report names it (relative to the repository when inside it).
    fn out_shown(&self) -> String {
        self.out
            .strip_prefix(&self.root)
            .unwrap_or(&self.out)
            .display()
            .to_string()
    }
}

/// A / B as the report prints it: three decimals below 10, one above (0.695, 61.4).
fn ratio_text(r: f64) -> String {
    if r < 10.0 {
        format!("{r:.3}")
    } else {
        format!("{r:.1}")
    }
}

// ---------------------------------------------------------------------------------------------
// The targets, each stated once

#[derive(Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
    /// Shown for comparison; nothing is promised.
    None,
}

/// What a target compares.
enum Measure {
    /// `key / baseline_key`, against the goal as a ratio; `unit` follows the two figures.
    Ratio {
        key: String,
        baseline: String,
        unit: &'static str,
    },
    /// One recorded value against the goal; `unit` follows it.
    Value { key: String, unit: &'static str },
    /// The sum of these counts must be zero; `shown` says what was counted.
    NoErrors { keys: Vec<String>, shown: String },
}

/// What a missed target's section quotes besides its note.
enum Extra {
    Probe,
    Explain(&'static str, String),
    Profile(&'static str),
    Statuses(Vec<(&'static str, &'static str)>),
}

struct Target {
    /// How scripts/bench.sh names it (`report --missed ID`).
    id: &'static str,
    what: String,
    measure: Measure,
    goal: Goal,
    note: Option<&'static str>,
    extras: Vec<Extra>,
}

fn targets(run: &Run) -> Vec<Target> {
    let (small, big, deep) = (
        run.cfg("small_users"),
        run.cfg("big_users"),
        run.cfg("deep"),
    );
    let ratio = |key: &str, baseline: &str| Measure::Ratio {
        key: key.to_owned(),
        baseline: baseline.to_owned(),
        unit: "",
    };
    let p99 = |key: &str, baseline: &str| Measure::Ratio {
        key: key.to_owned(),
        baseline: baseline.to_owned(),
        unit: " ms",
    };
    vec![
        Target {
            id: "s1",
            what: "1. user by id, cache off, vs pgbench".into(),
            measure: ratio("s1_rps", "pg_get_user_tps"),
            goal: Goal::AtLeast(0.8),
            note: Some("s1.md"),
            extras: vec![Extra::Probe, Extra::Profile("s1")],
        },
        Target {
            id: "s2",
            what: format!("2. user by id, cache warm, vs `/health`, -c{}", run.cfg("connections")),
            measure: ratio("s2_rps", "health_rps"),
            goal: Goal::AtLeast(0.8),
            note: Some("s2.md"),
            extras: vec![Extra::Profile("s2")],
        },
        Target {
            id: "s2_high",
            what: format!("2. user by id, cache warm, vs `/health`, -c{}", run.get("cfg_connections_high")),
            measure: ratio("s2_high_rps", "health_high_rps"),
            goal: Goal::AtLeast(0.8),
            note: Some("s2.md"),
            extras: vec![Extra::Profile("s2_high")],
        },
        Target {
            id: "s2_few",
            what: format!(
                "2. user by id, cache warm, {} users only, vs `/health`, -c{}",
                run.cfg("few_users"),
                run.cfg("connections")
            ),
            measure: ratio("s2_few_rps", "health_few_rps"),
            goal: Goal::None,
            note: None,
            extras: vec![],
        },
        Target {
            id: "page_big",
            what: format!("3. page-mode p99 at {big} users vs at {small}"),
            measure: p99("page_big_p99_ms", "page_small_p99_ms"),
            goal: Goal::AtMost(5.0),
            note: Some("page.md"),
            extras: vec![
                Extra::Explain(
                    "page_big",
                    "The listing query at a middle page of the large set (`EXPLAIN (ANALYZE, BUFFERS)`):".into(),
                ),
                Extra::Profile("page_big"),
            ],
        },
        Target {
            id: "cursor_deep",
            what: format!("3. cursor p99 at depth {deep} vs at depth 0"),
            measure: p99("cursor_deep_p99_ms", "cursor_top_p99_ms"),
            goal: Goal::AtMost(1.5),
            note: Some("cursor.md"),
            extras: vec![
                Extra::Explain(
                    "cursor_deep",
                    format!("The keyset query at depth {deep} (`EXPLAIN (ANALYZE, BUFFERS)`):"),
                ),
                Extra::Profile("cursor_deep"),
            ],
        },
        Target {
            id: "orders",
            what: "4. orders: nothing answered but 201/409".into(),
            measure: NoErrors::of(
                &["orders_errors", "orders_hot_errors"],
                format!(
                    "random: {}; hot: {}",
                    run.get("orders_statuses"),
                    run.get("orders_hot_statuses")
                ),
            ),
            goal: Goal::AtMost(0.0),
            note: Some("orders.md"),
            extras: vec![
                Extra::Statuses(vec![("Random products", "orders"), ("Hot products", "orders_hot")]),
                Extra::Profile("orders_hot"),
            ],
        },
        Target {
            id: "orders_vs_pg",
            what: format!("4a. orders, {} products, vs pgbench", run.cfg("products")),
            measure: ratio("orders_rps", "pg_orders_tps"),
            goal: Goal::None,
            note: None,
            extras: vec![],
        },
        Target {
            id: "orders_hot_vs_pg",
            what: format!("4b. orders, {} hot products, vs pgbench", run.cfg("hot_products")),
            measure: ratio("orders_hot_rps", "pg_orders_hot_tps"),
            goal: Goal::None,
            note: None,
            extras: vec![],
        },
        Target {
            id: "rss",
            what: format!("RSS with {} users cached, MiB", run.get("cache_users_entries")),
            measure: Measure::Value {
                key: "rss_cached_hwm_mib".into(),
                unit: " MiB peak",
            },
            goal: Goal::AtMost(150.0),
            note: Some("rss.md"),
            extras: vec![],
        },
        Target {
            id: "flash",
            what: "6. flash sale vs pgbench, today's statements".into(),
            measure: ratio("flash_rps", "pg_flash_tps"),
            goal: Goal::AtLeast(2.0),
            note: Some("flash.md"),
            extras: vec![Extra::Profile("flash")],
        },
        Target {
            id: "flash_selling",
            what: "6. flash sale, orders/s until the last sale, vs today's statements".into(),
            measure: ratio("flash_sale_rate", "pg_flash_sale_rate"),
            goal: Goal::None,
            note: None,
            extras: vec![],
        },
        Target {
            id: "flash_cte",
            what: "6. flash sale vs pgbench, one data-modifying CTE".into(),
            measure: ratio("flash_rps", "pg_flash_cte_tps"),
            goal: Goal::None,
            note: None,
            extras: vec![],
        },
        Target {
            id: "flash_cte_quiet",
            what: "6. flash sale vs pgbench, one data-modifying CTE without cache notices".into(),
            measure: ratio("flash_rps", "pg_flash_quiet_tps"),
            goal: Goal::None,
            note: None,
            extras: vec![],
        },
        Target {
            id: "flash_p99",
            what: "6. flash sale p99, ms".into(),
            measure: Measure::Value {
                key: "flash_p99_ms".into(),
                unit: " ms",
            },
            goal: Goal::AtMost(50.0),
            note: Some("flash.md"),
            extras: vec![Extra::Profile("flash")],
        },
        Target {
            id: "flash_statuses",
            what: "6. flash sale: nothing answered but 201/409".into(),
            measure: NoErrors::of(&["flash_errors"], run.get("flash_statuses")),
            goal: Goal::AtMost(0.0),
            note: Some("flash.md"),
            extras: vec![Extra::Statuses(vec![("Flash sale", "flash")])],
        },
        Target {
            id: "mongo_get",
            what: "7. MongoDB: user by id, cache off, vs the driver alone".into(),
            measure: ratio("mongo_get_rps", "mongo_driver_get_rps"),
            goal: Goal::None,
            note: None,
            extras: vec![],
        },
        Target {
            id: "mongo_orders",
            what: "7. MongoDB: orders vs the driver alone".into(),
            measure: ratio("mongo_orders_rps", "mongo_driver_orders_rps"),
            goal: Goal::None,
            note: None,
            extras: vec![],
        },
        Target {
            id: "replica_cold",
            what: "8. user by id, cache off, one replica, vs the primary alone (scenario 1)".into(),
            measure: ratio("replica_cold_rps", "s1_rps"),
            goal: Goal::None,
            note: None,
            extras: vec![],
        },
    ]
}

struct NoErrors;

impl NoErrors {
    fn of(keys: &[&str], shown: String) -> Measure {
        Measure::NoErrors {
            keys: keys.iter().map(|key| (*key).to_owned()).collect(),
            shown,
        }
    }
}

/// A target's outcome on this run.
struct Outcome {
    /// The measured column: figures, their ratio in bold.
    shown: String,
    met: Option<bool>,
}

impl Target {
    fn outcome(&self, run: &Run) -> Option<Outcome> {
        let (value, shown) = match &self.measure {
            Measure::Ratio {
                key,
                baseline,
                unit,
            } => {
                let (a, b) = (run.num(key)?, run.num(baseline)?);
                let r = a / b;
                let mut shown = format!(
                    "{} / {}{unit} = **{}×**",
                    run.get(key),
                    run.get(baseline),
                    ratio_text(r)
                );
                let rounds = key
                    .strip_suffix("_rps")
                    .and_then(|name| run.values.get(&format!("{name}_round_ratios")));
                if let Some(rounds) = rounds {
                    let _ = write!(shown, " (median of rounds: {rounds})");
                }
                (r, shown)
            }
            Measure::Value { key, unit } => {
                let v = run.num(key)?;
                (v, format!("**{}**{unit}", run.get(key)))
            }
            Measure::NoErrors { keys, shown } => {
                let counts: Vec<f64> =
                    keys.iter().map(|key| run.num(key)).collect::<Option<_>>()?;
                let listed: Vec<String> = keys.iter().map(|key| run.get(key)).collect();
                let total = counts.iter().sum();
                (total, format!("{shown}; errors {}", listed.join(" + ")))
            }
        };
        let met = match self.goal {
            Goal::AtLeast(goal) => Some(value >= goal),
            Goal::AtMost(goal) => Some(value <= goal),
            Goal::None => None,
        };
        Some(Outcome { shown, met })
    }

    fn goal_text(&self) -> String {
        let unit = match self.measure {
            Measure::Ratio { .. } => "×",
            Measure::Value { unit, .. } => unit.trim_end_matches(" peak"),
            Measure::NoErrors { .. } => "",
        };
        if matches!(self.measure, Measure::NoErrors { .. }) {
            return "no errors".to_owned();
        }
        match self.goal {
            Goal::AtLeast(goal) => format!("≥ {goal}{unit}"),
            Goal::AtMost(goal) => format!("≤ {goal}{unit}"),
            Goal::None => "none".to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tables of figures

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Wrk,
    Pgbench,
    /// `mongobench`: the MongoDB driver alone.
    Driver,
}

/// One run of the results and CPU tables.
struct Row {
    label: String,
    cpu_label: String,
    name: &'static str,
    source: Source,
    rss: Option<&'static str>,
    mongo: bool,
}

fn rows(run: &Run) -> Vec<Row> {
    let (products, hot) = (run.cfg("products"), run.cfg("hot_products"));
    let (small, big, deep) = (
        run.cfg("small_users"),
        run.cfg("big_users"),
        run.cfg("deep"),
    );
    let high = run.get("cfg_connections_high");
    let few = run.cfg("few_users");
    let flash = run.get("flash_stock_per_product");
    let row = |label: String, cpu: String, name, source, rss| Row {
        label,
        cpu_label: cpu,
        name,
        source,
        rss,
        mongo: false,
    };
    let mut rows = vec![
        row(
            "pgbench: user by primary key".into(),
            "pgbench: user by primary key".into(),
            "pg_get_user",
            Source::Pgbench,
            None,
        ),
        row(
            "1. `GET /v1/users/{id}`, cache off".into(),
            "1. user by id, cache off".into(),
            "s1",
            Source::Wrk,
            Some("rss_nocache_hwm_kb"),
        ),
        row(
            "`GET /health`".into(),
            "`/health`".into(),
            "health",
            Source::Wrk,
            None,
        ),
        row(
            "2. `GET /v1/users/{id}`, cache warm".into(),
            "2. user by id, cache warm".into(),
            "s2",
            Source::Wrk,
            None,
        ),
        row(
            format!("2. `GET /v1/users/{{id}}`, cache warm, {few} users only"),
            format!("2. user by id, cache warm, {few} users only"),
            "s2_few",
            Source::Wrk,
            None,
        ),
        row(
            format!("`GET /health`, -c{high}"),
            format!("`/health`, -c{high}"),
            "health_high",
            Source::Wrk,
            None,
        ),
        row(
            format!("2. `GET /v1/users/{{id}}`, cache warm, -c{high}"),
            format!("2. user by id, cache warm, -c{high}"),
            "s2_high",
            Source::Wrk,
            Some("rss_cached_hwm_kb"),
        ),
        row(
            format!("3a. page mode, {small} users"),
            format!("3a. page mode, {small} users"),
            "page_small",
            Source::Wrk,
            Some("rss_small_hwm_kb"),
        ),
        row(
            format!("3b. page mode, {big} users"),
            format!("3b. page mode, {big} users"),
            "page_big",
            Source::Wrk,
            None,
        ),
        row(
            format!("3c. cursor mode, depth 0, {big} users"),
            "3c. cursor, depth 0".into(),
            "cursor_top",
            Source::Wrk,
            None,
        ),
        row(
            format!("3d. cursor mode, depth {deep}, {big} users"),
            format!("3d. cursor, depth {deep}"),
            "cursor_deep",
            Source::Wrk,
            Some("rss_big_hwm_kb"),
        ),
        row(
            format!("pgbench: order transaction, {products} products"),
            format!("pgbench: order, {products} products"),
            "pg_orders",
            Source::Pgbench,
            None,
        ),
        row(
            format!("4a. `POST /v1/orders`, {products} products"),
            format!("4a. orders, {products} products"),
            "orders",
            Source::Wrk,
            None,
        ),
        row(
            format!("pgbench: order transaction, {hot} hot products"),
            format!("pgbench: order, {hot} hot products"),
            "pg_orders_hot",
            Source::Pgbench,
            None,
        ),
        row(
            format!("4b. `POST /v1/orders`, {hot} hot products"),
            format!("4b. orders, {hot} hot products"),
            "orders_hot",
            Source::Wrk,
            Some("rss_orders_hwm_kb"),
        ),
        row(
            "5. `POST /v1/users`".into(),
            "5. create user".into(),
            "users_post",
            Source::Wrk,
            Some("rss_users_hwm_kb"),
        ),
        row(
            format!("pgbench: flash sale, today's statements, {hot} products × {flash}"),
            "pgbench: flash sale, today's statements".into(),
            "pg_flash",
            Source::Pgbench,
            None,
        ),
        row(
            format!("pgbench: flash sale, one CTE, {hot} products × {flash}"),
            "pgbench: flash sale, one CTE".into(),
            "pg_flash_cte",
            Source::Pgbench,
            None,
        ),
        row(
            format!("pgbench: flash sale, one CTE without cache notices, {hot} products × {flash}"),
            "pgbench: flash sale, one CTE, no notices".into(),
            "pg_flash_quiet",
            Source::Pgbench,
            None,
        ),
        row(
            format!("6. `POST /v1/orders`, flash sale, {hot} products × {flash}"),
            "6. flash sale".into(),
            "flash",
            Source::Wrk,
            Some("rss_flash_hwm_kb"),
        ),
    ];
    let mongo_users = run.get("cfg_mongo_users");
    let mongo_products = run.get("cfg_mongo_products");
    let mongo = [
        (
            format!("MongoDB driver: `find_one` by `_id`, {mongo_users} users"),
            "",
            "mongo_driver_get",
            Source::Driver,
            None,
        ),
        (
            "7a. MongoDB: `GET /v1/users/{id}`, cache off".to_owned(),
            "7a. MongoDB: user by id, cache off",
            "mongo_get",
            Source::Wrk,
            Some("rss_mongo_get_hwm_kb"),
        ),
        (
            format!("MongoDB driver: order transaction, {mongo_products} products"),
            "",
            "mongo_driver_orders",
            Source::Driver,
            None,
        ),
        (
            format!("7b. MongoDB: `POST /v1/orders`, {mongo_products} products"),
            "7b. MongoDB: orders",
            "mongo_orders",
            Source::Wrk,
            Some("rss_mongo_orders_hwm_kb"),
        ),
    ];
    rows.extend(
        mongo
            .into_iter()
            .map(|(label, cpu, name, source, rss)| Row {
                label,
                cpu_label: cpu.to_owned(),
                name,
                source,
                rss,
                mongo: true,
            }),
    );
    rows.push(row(
        "8a. `GET /v1/users/{id}`, cache off, primary + one replica".into(),
        "8a. user by id, cache off, with a replica (primary's backends only)".into(),
        "replica_cold",
        Source::Wrk,
        None,
    ));
    rows.push(row(
        "8b. `PATCH` then `GET` with its token, primary + one replica".into(),
        "8b. write, then read with its token (primary's backends only)".into(),
        "replica_token",
        Source::Wrk,
        None,
    ));
    rows
}

fn results_row(run: &Run, row: &Row) -> String {
    let n = row.name;
    let key = |suffix: &str| run.get(&format!("{n}_{suffix}"));
    let rss = row.rss.map_or_else(String::new, |k| match run.num(k) {
        Some(_) => format!("{} MiB", run.mib(k)),
        None => String::new(),
    });
    match row.source {
        Source::Pgbench => format!(
            "| {} | {} tps | {} | {} | {} | | |",
            row.label,
            key("tps"),
            key("p50_ms"),
            key("p99_ms"),
            key("failed")
        ),
        Source::Driver => format!(
            "| {} | {} | {} | {} | {} | {} retries | |",
            row.label,
            key("rps"),
            key("p50_ms"),
            key("p99_ms"),
            key("errors"),
            key("retries")
        ),
        Source::Wrk => format!(
            "| {} | {} | {} | {} | {} | {} | {rss} |",
            row.label,
            key("rps"),
            key("p50_ms"),
            key("p99_ms"),
            key("errors"),
            key("statuses")
        ),
    }
}

fn cpu_row(run: &Run, row: &Row) -> String {
    let n = row.name;
    let key = |suffix: &str| run.get(&format!("{n}_{suffix}"));
    let mut server = key("cpu_server_us");
    if server == "0.00" {
        server = DASH.to_owned();
    }
    let database = if row.mongo {
        "n/a (MongoDB)".to_owned()
    } else {
        key("cpu_pg_us")
    };
    format!(
        "| {} | {} | {server} | {database} | {} | {} | {} |",
        row.cpu_label,
        key("busy_pct"),
        key("cpu_client_us"),
        key("other_cores"),
        key("load_before")
    )
}

// ---------------------------------------------------------------------------------------------
// Profiles and plans quoted for a missed target

/// The first `lines` lines of a perf report, without comments and blank lines.
fn excerpt(run: &Run, file: &str, lines: usize) -> String {
    let text: Vec<String> = run
        .file(file)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| line.chars().take(150).collect())
        .take(lines)
        .collect();
    if text.is_empty() {
        "(nothing above the reporting threshold)".to_owned()
    } else {
        text.join("\n")
    }
}

fn profile_excerpt(run: &Run, name: &str) -> String {
    let split = format!("profile-{name}-split.txt");
    let Some(split_text) = run.file(&split) else {
        return String::new();
    };
    if split_text.trim().is_empty() {
        return "\n(No profile: perf was not available.)\n".to_owned();
    }
    let rerun = run
        .file(&format!("wrk-{name}-profile.txt"))
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("BENCH "))
                .and_then(|line| line.split(' ').find_map(|kv| kv.strip_prefix("rps=")))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".to_owned());
    let mut s = String::new();
    let _ = write!(
        s,
        "\nA profile of the same load, run again for {PROFILE_SECONDS} s under \
         `perf record -a -g` (raw data: `perf-{name}.data`; that re-run did {rerun} \
         requests/s). All samples, by process:\n\n```\n{}```\n",
        split_text
    );
    let _ = write!(
        s,
        "\nThe server's threads, hottest functions (self time, `--sort dso,sym`):\n\n```\n{}\n```\n",
        excerpt(run, &format!("profile-{name}-server.txt"), 20)
    );
    let _ = write!(
        s,
        "\nThe server's threads, inclusive time (`--children --sort sym`), top entries:\n\n```\n{}\n```\n",
        excerpt(run, &format!("profile-{name}-server-children.txt"), 30)
    );
    let _ = write!(
        s,
        "\nPostgreSQL's processes, hottest functions:\n\n```\n{}\n```\n",
        excerpt(run, &format!("profile-{name}-postgres.txt"), 15)
    );
    s
}

fn probe_table(run: &Run) -> String {
    if run.num("probe_true_qps").is_none() {
        return String::new();
    }
    let vs = |key: &str| match (run.num(key), run.num("pg_get_user_tps")) {
        (Some(a), Some(b)) => format!("{:.2}×", a / b),
        _ => DASH.to_owned(),
    };
    format!(
        "\n`target/release/poolprobe` (the service's query through a SeaORM pool configured like the
service's, {c} concurrent tasks, no HTTP; same database, same {d} s):

| pool | queries/s | p50 ms | p99 ms | vs pgbench |
|---|---:|---:|---:|---:|
| every checkout pinged (`test_before_acquire(true)`, SeaORM's default) | {} | {} | {} | {} |
| as the service builds it: pinged only after 500 ms idle | {} | {} | {} | {} |
",
        run.get("probe_true_qps"),
        run.get("probe_true_p50_ms"),
        run.get("probe_true_p99_ms"),
        vs("probe_true_qps"),
        run.get("probe_false_qps"),
        run.get("probe_false_p50_ms"),
        run.get("probe_false_p99_ms"),
        vs("probe_false_qps"),
        c = run.cfg("connections"),
        d = run.cfg("duration"),
    )
}

/// The profiles recorded for a target that was met (`BENCH_PROFILE=all`), under its heading.
fn met_profiles<'a>(
    run: &Run,
    target: &'a Target,
    outcome: &Outcome,
    quoted: &mut Vec<&'a str>,
) -> String {
    let mut s = String::new();
    for extra in &target.extras {
        if let Extra::Profile(name) = extra
            && !quoted.contains(name)
            && run.file(&format!("profile-{name}-split.txt")).is_some()
        {
            quoted.push(name);
            let _ = write!(s, "\n### {}: {}\n", target.what, outcome.shown);
            s.push_str(&profile_excerpt(run, name));
        }
    }
    s
}

/// A missed target's section. A note or profile shared by two targets (the flash sale's) is
/// quoted under the first of them only.
fn missed_section<'a>(
    run: &Run,
    target: &'a Target,
    outcome: &Outcome,
    quoted: &mut Vec<&'a str>,
) -> String {
    let mut s = format!(
        "\n### {}: {} (goal {})\n",
        target.what,
        outcome.shown,
        target.goal_text()
    );
    if let Some(note) = target.note
        && !quoted.contains(&note)
    {
        quoted.push(note);
        s.push_str(&run.note(note));
    }
    for extra in &target.extras {
        match extra {
            Extra::Probe => s.push_str(&probe_table(run)),
            Extra::Explain(name, intro) => {
                let _ = write!(s, "\n{intro}\n");
                if let Some(plan) = run
                    .file(&format!("explain-{name}.txt"))
                    .filter(|p| !p.trim().is_empty())
                {
                    let _ = write!(s, "\n```\n{plan}```\n");
                }
            }
            Extra::Profile(name) => {
                if !quoted.contains(name) {
                    quoted.push(name);
                    s.push_str(&profile_excerpt(run, name));
                }
            }
            Extra::Statuses(runs) => {
                let listed: Vec<String> = runs
                    .iter()
                    .map(|(label, name)| {
                        format!(
                            "{label}: {} ({} socket errors)",
                            run.get(&format!("{name}_statuses")),
                            run.get(&format!("{name}_socket_errors"))
                        )
                    })
                    .collect();
                let _ = write!(s, "\n{}.\n", listed.join("; "));
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The report

/// Settings that differ from scripts/bench.sh's defaults, for the set-up section.
fn reduced_settings(run: &Run) -> Option<String> {
    let defaults = [
        ("duration", "15", "BENCH_DURATION"),
        ("connections", "32", "BENCH_CONNECTIONS"),
        ("users", "100000", "BENCH_USERS"),
        ("orders", "100000", "BENCH_ORDERS"),
        ("small_users", "10000", "BENCH_SMALL_USERS"),
        ("big_users", "1000000", "BENCH_BIG_USERS"),
        ("deep", "900000", "BENCH_DEEP"),
        ("rounds", "7", "BENCH_ROUNDS"),
    ];
    let changed: Vec<String> = defaults
        .iter()
        .filter(|(key, default, _)| {
            let value = run.cfg(key);
            value != DASH && value != *default
        })
        .map(|(key, default, var)| format!("`{var}={}` (default {default})", run.cfg(key)))
        .collect();
    (!changed.is_empty()).then(|| changed.join(", "))
}

fn render(run: &Run) -> Result<String> {
    let g = |key: &str| run.get(key);
    let (users, products, orders) = (run.cfg("users"), run.cfg("products"), run.cfg("orders"));
    let (small, big, deep, hot) = (
        run.cfg("small_users"),
        run.cfg("big_users"),
        run.cfg("deep"),
        run.cfg("hot_products"),
    );
    let (duration, connections, threads) = (
        run.cfg("duration"),
        run.cfg("connections"),
        run.cfg("threads"),
    );
    let nproc = g("machine_nproc");
    let out_shown = run.out_shown();
    let mut s = String::new();

    let build = if run.num("build_changes").unwrap_or(0.0) == 0.0 {
        ", no uncommitted changes under api/, entity/, migration/".to_owned()
    } else {
        format!(
            " plus uncommitted changes to {} file(s) under api/, entity/, migration/ or in Cargo.lock",
            g("build_changes")
        )
    };
    let _ = write!(
        s,
        "# Benchmarks

Produced by `scripts/bench.sh` on {started} (UTC); raw output in `{out_shown}` (not
committed), rendered by `target/release/report`. Everything below comes from that one run: each
figure and the baseline it is compared with were measured minutes apart on the same machine, the
same database server and the same data.

## Machine

| | |
|---|---|
| CPU | {cpu}, **{nproc} cores** (`nproc`) |
| memory | {mem} MiB |
| kernel | {kernel} |
| PostgreSQL | {pg}, same machine, reached over TCP on 127.0.0.1 with the clients' default `sslmode=prefer` (pgbench: {pg_tls}, the service: {server_tls}); {pg_settings} |
| MongoDB wire server | {mongo}, same machine, `directConnection=true` |
| load generators | {wrk}; {pgbench} |
| Rust | {rustc}, `cargo build --release` (the workspace's release profile) |
| service built from | commit `{commit}`{build} |
| load average at start | {load} |

The load generator, the server and the database share these {nproc} cores, so every figure
is a whole-machine figure: wrk and pgbench take their share of the CPU, as the profiles below
show. Ratios between runs are the meaningful output; absolute numbers are specific to this box.

## Method
",
        started = g("run_started"),
        cpu = g("machine_cpu"),
        mem = g("machine_mem_mib"),
        kernel = g("machine_kernel"),
        pg = g("machine_pg"),
        pg_tls = g("pg_get_user_tls"),
        server_tls = g("server_tls"),
        pg_settings = g("machine_pg_settings"),
        mongo = g("machine_mongo"),
        wrk = g("machine_wrk"),
        pgbench = g("machine_pgbench"),
        rustc = g("machine_rustc"),
        commit = g("build_commit"),
        load = g("load_start"),
    );
    if let Some(changed) = reduced_settings(run) {
        let _ = write!(
            s,
            "
- **Reduced run**: {changed}, to fit the run into the time available; the ratios compare
  runs measured with the same settings."
        );
    }
    let _ = write!(
        s,
        "
- Data (`target/release/seed`, PostgreSQL `COPY … FROM STDIN` after the service's own
  migrations, then `VACUUM (ANALYZE)`): main set {users} users, {products} products
  (100,000,000 in stock each), {orders} orders of 1–3 items; {small} users for the small
  listing; {big} users for the large listings. UUIDv7 ids made from `created_at`, spread
  over the past year; unique lower-case emails; statuses 80/15/5 % active/inactive/suspended;
  every user has the same precomputed Argon2id hash (m=19456, t=2, p=1) of one password.
- Seeding took **{seed_main} s** for {users} users / {products} products / {orders} orders
  ({main_items} items) and **{seed_big} s** for {big} users / {products} products /
  {orders} orders ({big_items} items), migrations and VACUUM included.
- HTTP load: `wrk -t{threads} -c{connections} -d{duration}s --timeout 30s --latency` with a Lua
  script per scenario (`bench/lua/`) that picks random seeded ids, pages or cursors (scenario 2
  also at -c{high}, against `/health` at -c{high}). Latencies are wrk's (coordinated omission
  not corrected); \"errors\" are socket errors plus any status the scenario does not allow.
  wrk times a run from when its last thread started but counts every request, so
  `get_user.lua` formats its requests before the first thread starts rather than in each
  thread's `init` (see the script).
- Database baselines: `pgbench -n -M prepared -c {connections} -j {threads} -T {duration}` with
  `bench/pgbench/get_user.sql` (the service's primary-key lookup, every column, `LIMIT 1`)
  and `bench/pgbench/place_order.sql` (the order transaction's statements and round trips);
  random seeded ids come from helper tables `bench_user_ids`/`bench_product_ids`
  (`n serial primary key, id uuid`), so each baseline statement also does one small
  primary-key probe the service does not. Its p50/p99 come from its per-transaction log
  (`-l --sampling-rate 0.2`). pgbench ran while no server was running, except in scenario 1.
- Scenarios 1 and 2 ran in {rounds} rounds, each a baseline run followed by the service's run
  (scenario 1: pgbench while the service sat idle; scenario 2: `/health`, then the read, on one
  server), so that both sides of every ratio share the machine's state at that moment. A target's
  ratio is the median of its rounds' ratios (all of them are listed with it); the tables show the
  round that gave it. Each round of scenario 2 at -c{connections} ends with the same read over
  only the first {few} of the cached users, as often each: that ratio has no goal, and shows what
  reading {users} distinct users costs beside reading a few.
- Flash sale (scenario 6): {hot} more products with **{flash} in stock each**, sized from
  scenario 4b's rate so that they sell out about halfway through a run, reset before each of its
  four runs: `bench/pgbench/place_order.sql` on them (the service's statements as it sends them
  today: the baseline of the goal), `bench/pgbench/place_order_cte.sql` (the same order as one
  data-modifying statement: lock the rows, guarded stock update, order and items inserted from
  its result, cache notices), the same statement without its `pg_notify` calls, and
  `POST /v1/orders` (`bench/lua/post_order.lua`, after its warm-up on the same products). Every
  buyer asks for 1–3 distinct ones of the {hot} products, quantity 1; once a product is gone the
  answer is 409 (pgbench: ROLLBACK).
- MongoDB (scenario 7): a scratch database on the MongoDB wire server, seeded with
  `target/release/mongobench seed` ({mongo_users} users, {mongo_products} products, documents as
  the service writes them), the service started on it (`DATABASE_URL=mongodb://…`), and the
  driver-only baselines from `target/release/mongobench get|order` at the same concurrency for
  the same time: the same `find_one` by `_id`, and the order's transaction without its
  idempotency key and without the service's user and product reads (conditional `$inc` per
  line, insert order, snapshot read concern, majority writes, retried on transient errors).
  The database was dropped at the end.
- Each scenario group ran in its own server process (release build, `DATABASE_URL`, `PORT`,
  otherwise defaults unless stated: pool 20, cache TTL 3600 s, 100,000 entries, `RUST_LOG`
  {rust_log}, stdout to a file); peak RSS is `VmHWM` from `/proc/<pid>/status` when
  the group ended. \"Cache off\" is `CACHE_TTL_SECS=0` with `SESSION_CACHE_TTL_SECS=3600`: no
  user comes from the cache, while the caller's bearer token is looked up once and then cached,
  as in any deployment, so each request reads the database exactly as the baseline does.

## Results

| scenario | requests/s | p50 ms | p99 ms | errors | status mix | server peak RSS |
|---|---:|---:|---:|---:|---|---:|
",
        seed_main = g("seed_main_s"),
        main_items = g("seed_main_items"),
        seed_big = g("seed_big_s"),
        big_items = g("seed_big_items"),
        high = g("cfg_connections_high"),
        flash = g("flash_stock_per_product"),
        mongo_users = g("cfg_mongo_users"),
        mongo_products = g("cfg_mongo_products"),
        rust_log = g("server_rust_log"),
        rounds = g("cfg_rounds"),
        few = g("cfg_few_users"),
    );
    let rows = rows(run);
    for row in &rows {
        if run.measured(row.name) {
            s.push_str(&results_row(run, row));
            s.push('\n');
        }
    }

    let per_query = match (run.num("s1_all_requests"), run.num("s1_queries")) {
        (Some(r), Some(q)) => format!("{:.2}", r / (q + 0.000001)),
        _ => DASH.to_owned(),
    };
    let per_page = 20.0;
    let pages = |key: &str| {
        run.num(&format!("cfg_{key}"))
            .map_or_else(|| DASH.to_owned(), |n| format!("{}", (n / per_page) as u64))
    };
    let deep_end = run
        .num("cfg_deep")
        .map_or_else(|| DASH.to_owned(), |d| format!("{}", d as u64 + 999));
    let aborted: f64 = run
        .values
        .iter()
        .filter(|(key, _)| key.starts_with("pg_") && key.ends_with("_aborted"))
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum();
    let aborted_note = if aborted == 0.0 {
        "no pgbench client aborted.".to_owned()
    } else {
        format!("**{aborted} pgbench clients aborted** (see `$OUT/pgbench-*.txt`).")
    };
    let mean_lookup = match (run.num("cfg_connections"), run.num("pg_get_user_tps")) {
        (Some(c), Some(tps)) => format!("{:.2}", c * 1000.0 / tps),
        _ => DASH.to_owned(),
    };
    let _ = write!(
        s,
        "
With the cache off, the service batches concurrent point reads (`api/src/store/batch.rs`):
scenario 1's server made **{queries}** queries for {all} requests
(warm-up included), {per_query} reads per query. In page mode
the users listing reads pages from recorded page positions (README, \"Deep pages\"), which the
server records in the background after the first deep request. The run waited for them
({index_wait} s after a 1 s burst of requests), then warmed up and measured: at
{big} users **{hits}** requests (burst and warm-up included) were answered from
them, {misses} the plain way while they were being recorded, in
{builds} pass(es) over the index.

Page mode draws pages uniformly from all of them ({small_pages} and
{big_pages} pages of 20). Cursor runs draw from 1,000 cursors at
newest-first positions 0–999 and {deep}–{deep_end} (computed by the seeder exactly as the
service encodes them). The pgbench \"errors\" column is failed transactions; {aborted_note} pgbench's
p50/p99 come from its per-transaction log, and pgbench reads the clock lazily, once per pass of
each thread's event loop, so on a saturated machine many transactions get near-zero latencies
and its p50 is not comparable with wrk's; its mean latency is connections ÷ tps (e.g.
{mean_lookup} ms for the lookup).
",
        queries = g("s1_queries"),
        all = g("s1_all_requests"),
        hits = g("page_big_index_hits"),
        misses = g("page_big_index_misses"),
        builds = g("page_big_index_builds"),
        index_wait = g("page_big_index_wait_s"),
        small_pages = pages("small_users"),
        big_pages = pages("big_users"),
    );
    if run.measured("flash") {
        let _ = write!(
            s,
            "
Flash sale: before each of its runs the {hot} products were reset to {flash} units each,
{total} in all. What each run sold, and when its last sale committed:

| run | transactions / requests | orders placed | units left | last sale, s into the run | orders/s until then |
|---|---:|---:|---:|---:|---:|
",
            flash = g("flash_stock_per_product"),
            total = g("flash_stock_total"),
        );
        for (label, name, count) in [
            ("pgbench, today's statements", "pg_flash", "transactions"),
            ("pgbench, one CTE", "pg_flash_cte", "transactions"),
            (
                "pgbench, one CTE without notices",
                "pg_flash_quiet",
                "transactions",
            ),
            ("`POST /v1/orders`", "flash", "requests"),
        ] {
            if run.measured(name) {
                let key = |suffix: &str| run.get(&format!("{name}_{suffix}"));
                let _ = writeln!(
                    s,
                    "| {label} | {} | {} | {} | {} | {} |",
                    key(count),
                    key("orders"),
                    key("left"),
                    key("last_sale_s"),
                    key("sale_rate")
                );
            }
        }
    }
    if run.measured("replica_cold") {
        let _ = write!(
            s,
            "
Read replica (scenario 8): a streaming replica of the same PostgreSQL server, made by
`pg_basebackup` through a replication slot (no apply delay), on a free port of the same machine;
the service ran with `DATABASE_REPLICA_URLS` naming it and the cache off as in scenario 1. Of the
cold reads' batched queries, **{replica}** were answered by the replica and {primary} by the
primary. In 8b every `GET` presented the token of the `PATCH` just before it, so it had to wait
for the replica to replay that write: {waits} batched reads carrying them waited, p50 ≤ {p50} ms and
p99 ≤ {p99} ms (`db_replica_wait_seconds`, histogram bucket bounds); {token_replica} of that
run's batched reads were answered by the replica and {token_primary} by the primary (after
`DB_REPLICA_WAIT_MS`, or the writes' own reads). Both servers, the service and wrk share the
same cores here, so a replica adds no capacity on this machine: the ratio shows what routing a
read to a replica costs.
",
            replica = g("replica_cold_replica_reads"),
            primary = g("replica_cold_primary_reads"),
            waits = g("replica_token_waits"),
            p50 = g("replica_token_wait_p50_ms"),
            p99 = g("replica_token_wait_p99_ms"),
            token_replica = g("replica_token_replica_reads"),
            token_primary = g("replica_token_primary_reads"),
        );
    }
    let _ = write!(
        s,
        "
### Where the CPU went

CPU time per request (per transaction for pgbench) of the server process, of the PostgreSQL
backends serving it, and of the load generator, from `/proc/<pid>/stat` before and after each
run (pgbench: its backends between 2 s in and 1 s before the end). \"Other\" is what the rest of
the machine used meanwhile, in cores: PostgreSQL's background processes, the kernel, the MongoDB
wire server, and whatever else was running.

| run | machine busy % | server µs | PostgreSQL µs | wrk/pgbench µs | other, cores | load avg before |
|---|---:|---:|---:|---:|---:|---|
"
    );
    for row in rows.iter().filter(|row| row.source != Source::Driver) {
        if run.measured(row.name) {
            s.push_str(&cpu_row(run, row));
            s.push('\n');
        }
    }
    let users_vs_hash = match (
        run.num("users_post_rps"),
        run.num("hash_rate_1"),
        run.num("machine_nproc"),
    ) {
        (Some(rps), Some(rate), Some(n)) => format!("{:.2}", rps / (rate * n)),
        _ => DASH.to_owned(),
    };
    let _ = write!(
        s,
        "
Cache: after warming, the users cache held **{entries}** entries; during scenario 2,
{hits} of {lookups} user lookups were hits. The server's RSS right after warming was
{warm_rss} MiB.

Argon2id (`target/release/hashrate`, m=19456 KiB, t=2, p=1): **{hash1} hashes/s on one
core**, {hash_all}/s on {nproc} threads. `POST /v1/users` reached {users_rps}/s,
{users_vs_hash}× one core's rate times {nproc} cores.

## Targets

Each row is one entry of the table in `bench/src/bin/report.rs`: the figure, the baseline it is
divided by (measured in the same run), the goal. Rows without a goal are there for comparison.

| target | measured | goal | |
|---|---|---|---|
",
        entries = g("cache_users_entries"),
        hits = g("cache_hits"),
        lookups = g("cache_lookups"),
        warm_rss = run.mib("rss_warm_rss_kb"),
        hash1 = g("hash_rate_1"),
        hash_all = g("hash_rate_all"),
        users_rps = g("users_post_rps"),
    );
    let targets = targets(run);
    let mut missed = String::new();
    let mut met = String::new();
    let mut quoted: Vec<&str> = Vec::new();
    for target in &targets {
        let Some(outcome) = target.outcome(run) else {
            let _ = writeln!(
                s,
                "| {} | not measured in this run | {} | — |",
                target.what,
                target.goal_text()
            );
            continue;
        };
        let verdict = match outcome.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {verdict} |",
            target.what,
            outcome.shown,
            target.goal_text()
        );
        if outcome.met == Some(false) {
            missed.push_str(&missed_section(run, target, &outcome, &mut quoted));
        } else if outcome.met == Some(true) {
            met.push_str(&met_profiles(run, target, &outcome, &mut quoted));
        }
    }
    s.push_str("\n## Missed targets\n");
    if missed.is_empty() {
        s.push_str("\nNone.\n");
    } else {
        s.push_str(&missed);
    }
    if !met.is_empty() {
        s.push_str("\n## Profiles of targets met (`BENCH_PROFILE=all`)\n");
        s.push_str(&met);
    }
    for note in ["general.md", "separate.md"] {
        let text = run.note(note);
        if !text.trim().is_empty() {
            s.push('\n');
            s.push_str(&text);
            if !text.ends_with('\n') {
                s.push('\n');
            }
        }
    }
    let out_abs = run.out.display().to_string();
    let commands = run
        .file("commands.txt")
        .unwrap_or_default()
        .replace(&out_abs, "$OUT")
        .replace(&out_shown, "$OUT");
    let _ = write!(
        s,
        "
## Exact commands

In the order they ran (`$OUT` is `{out_shown}`; the scratch databases were dropped at
the end):

```sh
{commands}```
"
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquotes_what_printf_q_writes() {
        assert_eq!(unquote(r"1.48\ 2.44\ 2.46"), "1.48 2.44 2.46");
        assert_eq!(unquote("''"), "");
        assert_eq!(unquote(r"\*\*3\ clients\*\*"), "**3 clients**");
        assert_eq!(unquote("$'a\\nb'"), "a\nb");
        assert_eq!(unquote("200:283870"), "200:283870");
    }

    #[test]
    fn a_later_record_wins() {
        let values = parse_env("a=1\nb=x\\ y\na=2\n");
        assert_eq!(values["a"], "2");
        assert_eq!(values["b"], "x y");
    }

    #[test]
    fn the_median_round_stands_for_a_paired_scenario() {
        let mut values = parse_env(
            "cfg_rounds=3\n\
             s1_r1_rps=70\npg_get_user_r1_tps=100\ns1_r1_p99_ms=1\n\
             s1_r2_rps=90\npg_get_user_r2_tps=100\ns1_r2_p99_ms=2\n\
             s1_r3_rps=160\npg_get_user_r3_tps=200\ns1_r3_p99_ms=3\npg_get_user_r3_p99_ms=4\n\
             health_r1_rps=10\n",
        );
        take_median_rounds(&mut values);
        // Ratios 0.7, 0.9 and 0.8: the third round is the median, whatever its throughput.
        assert_eq!(values["s1_round"], "3");
        assert_eq!(values["s1_rps"], "160");
        assert_eq!(values["pg_get_user_tps"], "200");
        assert_eq!(values["s1_p99_ms"], "3");
        assert_eq!(values["pg_get_user_p99_ms"], "4");
        assert_eq!(values["s1_round_ratios"], "0.700, 0.900, 0.800");
        // A scenario missing its baseline's rounds is left alone.
        assert!(!values.contains_key("s2_round"));
        assert!(!values.contains_key("health_rps"));
    }

    #[test]
    fn a_shared_baseline_keeps_each_scenarios_own_median_round() {
        let mut values = parse_env(
            "cfg_rounds=3\n\
             health_r1_rps=100\ns2_r1_rps=70\ns2_few_r1_rps=95\n\
             health_r2_rps=200\ns2_r2_rps=160\ns2_few_r2_rps=150\n\
             health_r3_rps=100\ns2_r3_rps=90\ns2_few_r3_rps=85\n",
        );
        take_median_rounds(&mut values);
        // s2: 0.7, 0.8, 0.9, so round 2; s2_few: 0.95, 0.75, 0.85, so round 3.
        assert_eq!(values["s2_round"], "2");
        assert_eq!(
            (values["s2_rps"].as_str(), values["health_rps"].as_str()),
            ("160", "200")
        );
        assert_eq!(values["s2_few_round"], "3");
        assert_eq!(
            (
                values["s2_few_rps"].as_str(),
                values["health_few_rps"].as_str()
            ),
            ("85", "100")
        );
    }

    #[test]
    fn ratios_keep_three_decimals_below_ten() {
        assert_eq!(ratio_text(0.6949), "0.695");
        assert_eq!(ratio_text(61.44), "61.4");
    }
}
