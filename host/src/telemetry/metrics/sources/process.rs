//! The process series every Prometheus client library exposes, read from `/proc` at each scrape:
//! resident memory, CPU time, open file descriptors, start time.

use prometheus::{CounterVec, GaugeVec, Opts, Registry};

use super::super::families::{NO_LABELS, gauge_vec, registered};
use super::super::{Scrape, Source};

struct ProcessSeries {
    rss: GaugeVec,
    fds: GaugeVec,
    start: GaugeVec,
    cpu: CounterVec,
}

pub(crate) fn register(r: &Registry) -> Box<dyn Source> {
    Box::new(ProcessSeries {
        rss: gauge_vec(
            r,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            &[],
        ),
        fds: gauge_vec(
            r,
            "process_open_fds",
            "Number of open file descriptors",
            &[],
        ),
        start: gauge_vec(
            r,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            &[],
        ),
        cpu: registered(
            r,
            CounterVec::new(
                Opts::new(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds",
                ),
                &[],
            )
            .expect("valid metric"),
        ),
    })
}

impl Source for ProcessSeries {
    fn read(&self, _at: &Scrape<'_>) {
        let Some(p) = process() else {
            return;
        };
        self.rss
            .with_label_values(&NO_LABELS)
            .set(p.rss_bytes as f64);
        self.fds
            .with_label_values(&NO_LABELS)
            .set(p.open_fds as f64);
        self.start
            .with_label_values(&NO_LABELS)
            .set(p.start_time_seconds);
        let cpu = self.cpu.with_label_values(&NO_LABELS);
        cpu.reset();
        cpu.inc_by(p.cpu_seconds);
    }
}

#[derive(Debug)]
struct Process {
    rss_bytes: u64,
    cpu_seconds: f64,
    open_fds: u64,
    start_time_seconds: f64,
}

fn process() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let start_ticks: f64 = fields.get(19)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(Process {
        rss_bytes: rss_pages * 4096,
        cpu_seconds: (utime + stime) / ticks,
        open_fds,
        start_time_seconds: boot + start_ticks / ticks,
    })
}
