//! least_latency: power of two choices over peak-EWMA latency (linkerd2-proxy's and Finagle's
//! balancer). Each backend keeps an average of its response-header latency that decays towards
//! new samples with time constant `ewma_decay`, jumps to a sample slower than itself (peak),
//! and, while no sample arrives, drifts back towards the pool's typical latency, so that a
//! backend that was slow once is tried again rather than starved forever. A pick draws two
//! distinct usable backends by (slow-start) weight and takes the one with the lower
//! latency x (in-flight + 1) / weight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::Candidates;
use crate::pool::BackendState;

/// Draws before a pick gives up finding a usable (or a second, distinct) backend.
const DRAWS: usize = 32;
/// A failed attempt counts as a sample this many times the pool's typical latency (or its own
/// time, if longer): a failing backend looks as bad as a tenfold slower one.
pub const PENALTY_FACTOR: f64 = 10.0;
/// The smallest penalty, for a pool with no sample yet: 100 ms.
const PENALTY_FLOOR_NS: f64 = 100e6;
/// Costs closer than this (relative) count as equal.
const TIE: f64 = 0.02;

/// Microseconds since the first call in this process (the clock of every average).
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// An exponentially weighted moving average in time, of nanoseconds. Lock-free: concurrent
/// samples may overwrite each other (one of them is lost), which an average can afford.
#[derive(Debug, Default)]
pub struct Ewma {
    /// f64 bits of the average; 0 = no sample yet.
    value: AtomicU64,
    /// When (`now_us`) the last sample arrived.
    at: AtomicU64,
}

/// exp(-elapsed / tau), the weight the past keeps after `elapsed`.
fn keep(elapsed_us: u64, tau: Duration) -> f64 {
    let tau_us = tau.as_micros().max(1) as f64;
    (-(elapsed_us as f64) / tau_us).exp()
}

impl Ewma {
    fn load(&self) -> Option<(f64, u64)> {
        let v = f64::from_bits(self.value.load(Ordering::Relaxed));
        (v > 0.0).then(|| (v, self.at.load(Ordering::Relaxed)))
    }

    fn store(&self, v: f64, now: u64) {
        self.value.store(v.max(1.0).to_bits(), Ordering::Relaxed);
        self.at.store(now, Ordering::Relaxed);
    }

    /// The average at `now`: the last one, drifted towards `typical` (when known) for the time
    /// since the last sample. None before the first sample.
    pub fn estimate(&self, now: u64, tau: Duration, typical: Option<f64>) -> Option<f64> {
        let (v, at) = self.load()?;
        Some(match typical {
            Some(t) => t + (v - t) * keep(now.saturating_sub(at), tau),
            None => v,
        })
    }

    /// Take a sample with the peak rule: a sample above the average replaces it, a lower one
    /// is mixed in by the time since the last sample.
    pub fn observe_peak(&self, now: u64, tau: Duration, sample_ns: f64) {
        let next = match self.load() {
            Some((v, _)) if sample_ns <= v => self.mixed(v, now, tau, sample_ns),
            _ => sample_ns,
        };
        self.store(next, now);
    }

    /// Take a sample, mixed in by the time since the last one (no peak).
    pub fn observe(&self, now: u64, tau: Duration, sample_ns: f64) {
        let next = match self.load() {
            Some((v, _)) => self.mixed(v, now, tau, sample_ns),
            None => sample_ns,
        };
        self.store(next, now);
    }

    fn mixed(&self, v: f64, now: u64, tau: Duration, sample_ns: f64) -> f64 {
        let w = keep(now.saturating_sub(self.at.load(Ordering::Relaxed)), tau);
        v * w + sample_ns * (1.0 - w)
    }

    /// The last average in milliseconds, undecayed (None: no sample yet).
    pub fn last_ms(&self) -> Option<f64> {
        self.load().map(|(v, _)| v / 1e6)
    }
}

/// A pick's cost of a backend: its latency estimate x (in-flight + 1) / weight (thousandths). A backend without an estimate costs the pool's typical latency, or 1 ns
/// when the pool has none yet (then in-flight per weight decides, as least connections).
pub fn cost(
    estimate: Option<f64>,
    typical: Option<f64>,
    inflight: usize,
    weight_milli: u64,
) -> f64 {
    let latency = estimate.or(typical).unwrap_or(1.0).max(1.0);
    latency * (inflight as f64 + 1.0) / (weight_milli.max(1) as f64 / 1000.0)
}

/// One pool's least_latency selector.
pub struct PeakEwma {
    /// Each backend (pool index) as many times as its weight: a uniform draw is a weighted one.
    draws: Box<[u32]>,
    tau: Duration,
    /// The pool's typical latency: a plain average of every backend's samples.
    typical: Ewma,
}

impl PeakEwma {
    /// A selector over backends given as weights by pool index; `tau` is `ewma_decay`.
    /// `typical_ns` seeds the pool's typical latency (a reload keeps what was learnt).
    pub fn new(weights: &[u32], tau: Duration, typical_ns: Option<f64>) -> PeakEwma {
        let draws = weights
            .iter()
            .enumerate()
            .flat_map(|(i, w)| std::iter::repeat_n(i as u32, (*w).max(1) as usize))
            .collect();
        let typical = Ewma::default();
        if let Some(t) = typical_ns {
            typical.store(t, now_us());
        }
        PeakEwma {
            draws,
            tau,
            typical,
        }
    }

    pub fn tau(&self) -> Duration {
        self.tau
    }

    /// The pool's typical latency in nanoseconds (None: no sample yet).
    pub fn typical_ns(&self) -> Option<f64> {
        self.typical.estimate(0, self.tau, None)
    }

    /// A weighted draw that `c` allows (ramping backends with a chance equal to their ramp),
    /// other than `not`.
    fn draw(&self, c: &Candidates, not: Option<usize>) -> Option<usize> {
        let len = self.draws.len();
        if len == 0 {
            return None;
        }
        (0..DRAWS)
            .filter_map(|_| self.draws.get(fastrand::usize(..len)).map(|&i| i as usize))
            .find(|&i| {
                Some(i) != not && c.usable(i) && {
                    let ramp = c.ramp(i);
                    ramp >= 1.0 || fastrand::f64() < ramp
                }
            })
    }

    /// The cost of backend `i` now. Its configured weight divides it: a ramp (slow start,
    /// reported load) already made the backend less likely to be drawn, as with `random`, and
    /// dividing by it again would starve a ramping backend of every pair it is in.
    fn cost_of(&self, c: &Candidates, i: usize, now: u64, typical: Option<f64>) -> f64 {
        let Some(s) = c.states.get(i) else {
            return f64::INFINITY;
        };
        let estimate = s.latency.estimate(now, self.tau, typical);
        cost(
            estimate,
            typical,
            s.inflight(),
            u64::from(s.weight()) * 1000,
        )
    }

    /// Pick the cheaper of two distinct weighted draws among the backends `c` allows (the one
    /// usable backend when there is only one). Returns a pool index, None when none is usable.
    pub fn pick(&self, c: &Candidates) -> Option<usize> {
        let Some(a) = self.draw(c, None) else {
            return c.any_usable();
        };
        let Some(b) = self.draw(c, Some(a)) else {
            return Some(a);
        };
        let now = now_us();
        let typical = self.typical_ns();
        let (ca, cb) = (
            self.cost_of(c, a, now, typical),
            self.cost_of(c, b, now, typical),
        );
        // The second draw wins only when clearly cheaper: costs within `TIE` of each other
        // go to the first draw, which is random, so equal backends share evenly instead of
        // being ranked by the microseconds between their samples.
        Some(if cb < ca * (1.0 - TIE) { b } else { a })
    }

    /// A response header from backend `s` arrived `latency` after its attempt began.
    pub fn observe(&self, s: &BackendState, latency: Duration) {
        let now = now_us();
        let ns = latency.as_nanos() as f64;
        s.latency.observe_peak(now, self.tau, ns);
        self.typical.observe(now, self.tau, ns);
    }

    /// An attempt on backend `s` failed after `elapsed`: a penalty sample (see
    /// `PENALTY_FACTOR`), which the pool's typical latency does not take.
    pub fn penalize(&self, s: &BackendState, elapsed: Duration) {
        let typical = self
            .typical_ns()
            .map_or(PENALTY_FLOOR_NS, |t| t * PENALTY_FACTOR);
        let ns = (elapsed.as_nanos() as f64).max(typical);
        s.latency.observe_peak(now_us(), self.tau, ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const TAU: Duration = Duration::from_secs(10);

    fn states(weights: &[u32]) -> Vec<Arc<BackendState>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                Arc::new(BackendState::new(addr.to_string(), addr, *w, false, false))
            })
            .collect()
    }

    fn tally(p: &PeakEwma, c: &Candidates, n: usize) -> BTreeMap<usize, usize> {
        let mut t = BTreeMap::new();
        for _ in 0..n {
            *t.entry(p.pick(c).unwrap()).or_default() += 1;
        }
        t
    }

    #[test]
    fn cost_is_latency_times_load_per_weight() {
        assert_eq!(cost(Some(10.0), None, 0, 1000), 10.0);
        assert_eq!(cost(Some(10.0), None, 3, 1000), 40.0);
        assert_eq!(cost(Some(10.0), None, 3, 2000), 20.0, "twice the weight");
        assert_eq!(cost(None, Some(5.0), 1, 1000), 10.0, "no sample: typical");
        assert_eq!(cost(None, None, 2, 1000), 3.0, "nothing known: load");
        assert_eq!(cost(Some(10.0), None, 0, 100), 100.0, "a tenth of a unit");
    }

    #[test]
    fn peaks_jump_and_lower_samples_mix_in_by_time() {
        let e = Ewma::default();
        assert_eq!(e.estimate(0, TAU, None), None);
        e.observe_peak(0, TAU, 1e6);
        e.observe_peak(0, TAU, 50e6);
        assert_eq!(
            e.estimate(0, TAU, None),
            Some(50e6),
            "a peak replaces the average"
        );
        // One time constant later, a low sample takes 1 - 1/e of the weight.
        e.observe_peak(10_000_000, TAU, 1e6);
        let v = e.estimate(10_000_000, TAU, None).unwrap();
        let want = 50e6 / std::f64::consts::E + 1e6 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((v - want).abs() < 1e3, "{v} vs {want}");
    }

    #[test]
    fn an_idle_backend_drifts_back_to_the_typical_latency() {
        let e = Ewma::default();
        e.observe_peak(0, TAU, 100e6);
        let typical = Some(10e6);
        assert_eq!(e.estimate(0, TAU, typical), Some(100e6));
        let later = e.estimate(30_000_000, TAU, typical).unwrap();
        assert!((later - 10e6).abs() < 5e6, "three time constants: {later}");
        let much_later = e.estimate(100_000_000, TAU, typical).unwrap();
        assert!(
            (much_later - 10e6).abs() < 1e4,
            "ten time constants: {much_later}"
        );
    }

    #[test]
    fn a_slow_backend_loses_its_pairs_and_equal_ones_share_evenly() {
        let s = states(&[1, 1, 1, 1]);
        let c = Candidates {
            states: &s,
            skip: &|_| false,
            slow_start: None,
        };
        let p = PeakEwma::new(&[1, 1, 1, 1], TAU, None);
        for (i, st) in s.iter().enumerate() {
            let ms = if i == 3 { 100 } else { 10 };
            p.observe(st, Duration::from_millis(ms));
            assert!(st.latency.last_ms().is_some());
        }
        let t = tally(&p, &c, 4000);
        assert_eq!(t.get(&3), None, "never the cheaper of a pair: {t:?}");
        for i in 0..3 {
            assert!((1150..1520).contains(&t[&i]), "{t:?}");
        }
    }

    #[test]
    fn load_outweighs_a_small_latency_edge() {
        let s = states(&[1, 1]);
        let c = Candidates {
            states: &s,
            skip: &|_| false,
            slow_start: None,
        };
        let p = PeakEwma::new(&[1, 1], TAU, None);
        p.observe(&s[0], Duration::from_millis(9));
        p.observe(&s[1], Duration::from_millis(10));
        assert_eq!(p.pick(&c), Some(0));
        let _busy: Vec<_> = (0..2)
            .map(|_| crate::pool::InflightGuard::acquire(s[0].clone()))
            .collect();
        assert_eq!(
            p.pick(&c),
            Some(1),
            "9 ms x 3 in flight costs more than 10 ms x 1"
        );
    }

    #[test]
    fn draws_honour_skip_readiness_and_weights() {
        let s = states(&[1, 3, 1]);
        let p = PeakEwma::new(&[1, 3, 1], TAU, None);
        let skip_two = Candidates {
            states: &s,
            skip: &|i| i == 2,
            slow_start: None,
        };
        s[0].eject(TAU, TAU, "test".into());
        for _ in 0..50 {
            assert_eq!(p.pick(&skip_two), Some(1), "the only usable one");
        }
        let none = Candidates {
            states: &s,
            skip: &|i| i != 0,
            slow_start: None,
        };
        assert_eq!(p.pick(&none), None);
    }

    #[test]
    fn a_ramping_backend_is_drawn_by_its_ramp() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 2000));
        let mut s = states(&[1]);
        // Joined a running pool: ramps from 10% of its weight under slow start.
        s.push(Arc::new(BackendState::new(
            "j".into(),
            addr,
            1,
            false,
            true,
        )));
        let c = Candidates {
            states: &s,
            skip: &|_| false,
            slow_start: Some(Duration::from_secs(100)),
        };
        let p = PeakEwma::new(&[1, 1], TAU, None);
        let t = tally(&p, &c, 5000);
        // 0.1 / 1.1 of 5000 = 455.
        assert!((300..650).contains(&t[&1]), "{t:?}");
    }

    #[test]
    fn failures_are_penalised_above_the_typical_latency() {
        let s = states(&[1, 1]);
        let c = Candidates {
            states: &s,
            skip: &|_| false,
            slow_start: None,
        };
        let p = PeakEwma::new(&[1, 1], TAU, None);
        p.observe(&s[0], Duration::from_millis(10));
        p.observe(&s[1], Duration::from_millis(10));
        p.penalize(&s[1], Duration::from_millis(1));
        let ms = s[1].latency.last_ms().unwrap();
        assert!(ms >= 99.0, "{ms}");
        assert!(
            p.typical_ns().unwrap() < 11e6,
            "penalties stay out of the typical"
        );
        let t = tally(&p, &c, 200);
        assert_eq!(t.get(&1), None, "{t:?}");
    }
}
