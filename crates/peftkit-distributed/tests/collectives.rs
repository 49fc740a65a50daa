//! Process groups of 2 ranks on 127.0.0.1 (one thread per rank), over a store the test serves on
//! a free port, as torchrun's agent does.

use peftkit_distributed::{
    DistEnv, DistError, GroupOptions, ProcessGroup, ReduceOp, Store, StoreHost,
};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

fn env(rank: usize, world: usize, port: u16, store_host: StoreHost) -> DistEnv {
    DistEnv {
        rank,
        world_size: world,
        local_rank: rank,
        local_world_size: world,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        store_host,
        gloo_interfaces: None,
        restart_count: 0,
    }
}

fn options(timeout_s: u64) -> GroupOptions {
    GroupOptions {
        timeout: Duration::from_secs(timeout_s),
        heartbeat: Duration::from_millis(100),
        ..GroupOptions::default()
    }
}

/// Runs `f(rank, group)` on `world` threads joined into one group.
fn with_group<T: Send>(world: usize, f: impl Fn(ProcessGroup) -> T + Sync) -> Vec<T> {
    let agent = Store::serve("127.0.0.1", 0, Some(world), Duration::from_secs(30)).unwrap();
    let port = agent.port().unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|r| {
                let f = &f;
                s.spawn(move || {
                    let pg =
                        ProcessGroup::init(&env(r, world, port, StoreHost::Launcher), &options(30))
                            .unwrap();
                    f(pg)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn collectives_combine_every_rank() {
    let results = with_group(2, |pg| {
        let r = pg.rank() as f32;
        let t = Tensor::from_slice(&[r + 1.0, 10.0 * r]);
        pg.all_reduce_sum(&[&t]).unwrap();
        let sum: Vec<f32> = Vec::try_from(&t).unwrap();
        // Several buckets at once, and another reduction.
        let a = Tensor::from_slice(&[r; 3]);
        let b = Tensor::from_slice(&[-r; 2]);
        pg.all_reduce(&[&a, &b], ReduceOp::Max).unwrap();
        let maxes = (
            Vec::<f32>::try_from(&a).unwrap(),
            Vec::<f32>::try_from(&b).unwrap(),
        );
        let w = Tensor::full([2, 2], r as f64, (Kind::Float, Device::Cpu));
        pg.broadcast(&w, 1).unwrap();
        let gathered = pg.all_gather(&Tensor::from_slice(&[r as i64, 7])).unwrap();
        let scalar = pg.all_gather(&Tensor::from(r as f64)).unwrap();
        pg.barrier().unwrap();
        (
            sum,
            maxes,
            w.sum(Kind::Float).double_value(&[]),
            Vec::<i64>::try_from(&gathered).unwrap(),
            Vec::<f64>::try_from(&scalar).unwrap(),
            pg.collectives(),
        )
    });
    for (sum, (a, b), w, gathered, scalar, n) in results {
        assert_eq!(sum, vec![3.0, 10.0]);
        assert_eq!(a, vec![1.0; 3]);
        assert_eq!(b, vec![0.0; 2]);
        assert_eq!(w, 4.0, "rank 1's tensor everywhere");
        assert_eq!(gathered, vec![0, 7, 1, 7]);
        assert_eq!(scalar, vec![0.0, 1.0]);
        assert_eq!(n, 6);
    }
}

#[test]
fn agreement_names_the_first_difference() {
    let results = with_group(2, |pg| {
        let same = pg.agree("the configuration", "a = 1\nb = 2");
        let value = if pg.rank() == 0 {
            "a = 1\nb = 2"
        } else {
            "a = 1\nb = 3"
        };
        let differ = pg.agree("the configuration", value);
        (same.is_ok(), differ.map_err(|e| e.to_string()))
    });
    for (same, differ) in results {
        assert!(same);
        let e = differ.unwrap_err();
        assert!(
            e.contains("disagree on the configuration")
                && e.contains("rank 0 has `b = 2`, rank 1 has `b = 3`"),
            "{e}"
        );
    }
}

#[test]
fn a_busy_port_is_refused_clearly() {
    let first = Store::serve("127.0.0.1", 0, Some(2), Duration::from_secs(5)).unwrap();
    let port = first.port().unwrap();
    // A second group whose rank 0 would serve the same port.
    let err = ProcessGroup::init(&env(0, 2, port, StoreHost::Rank0), &options(5)).unwrap_err();
    assert!(matches!(err, DistError::PortInUse { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("127.0.0.1:{port} is already in use")),
        "{msg}"
    );
}

#[test]
fn a_missing_rank_is_named_at_the_rendezvous_timeout() {
    let agent = Store::serve("127.0.0.1", 0, Some(2), Duration::from_secs(5)).unwrap();
    let port = agent.port().unwrap();
    let start = Instant::now();
    let err = ProcessGroup::init(&env(0, 2, port, StoreHost::Launcher), &options(2)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("1 of 2 ranks joined") && msg.contains("missing rank(s) 1"),
        "{msg}"
    );
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_rank_that_leaves_is_named_by_the_survivor() {
    let results = with_group(2, |pg| {
        let t = Tensor::from_slice(&[1.0f32]);
        pg.all_reduce_sum(&[&t]).unwrap();
        if pg.rank() == 1 {
            // Rank 1 goes away: its connections close and its heartbeat stops.
            drop(pg);
            return None;
        }
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let err = pg.all_reduce_sum(&[&t]).unwrap_err();
        Some((err.to_string(), start.elapsed()))
    });
    let (msg, took) = results[0].clone().unwrap();
    assert!(
        msg.starts_with("rank 0: all-reduce #2 failed: rank 1 stopped responding"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(25), "took {took:?}");
}

#[test]
fn a_reported_failure_is_quoted() {
    let results = with_group(2, |pg| {
        let t = Tensor::from_slice(&[1.0f32]);
        if pg.rank() == 1 {
            pg.report_failure("eval set: row 3 has label 9");
            drop(pg);
            return None;
        }
        Some(pg.all_reduce_sum(&[&t]).unwrap_err().to_string())
    });
    let msg = results[0].clone().unwrap();
    assert!(
        msg.contains("rank 1 failed: eval set: row 3 has label 9"),
        "{msg}"
    );
}

#[test]
fn nccl_serves_cuda_tensors_or_is_refused_clearly() {
    let agent = Store::serve("127.0.0.1", 0, Some(1), Duration::from_secs(10)).unwrap();
    let env = env(0, 1, agent.port().unwrap(), StoreHost::Launcher);
    let opts = GroupOptions {
        backend: peftkit_distributed::Backend::Nccl,
        ..options(10)
    };
    match ProcessGroup::init(&env, &opts) {
        Ok(pg) => {
            // A GPU machine with a CUDA libtorch: a world of one reduces on cuda:0.
            assert!(tch::Cuda::is_available());
            assert_eq!(pg.collective_device(), Device::Cuda(0));
            let t = Tensor::ones([3], (Kind::Float, Device::Cuda(0)));
            pg.all_reduce_sum(&[&t]).unwrap();
            assert_eq!(t.sum(Kind::Float).double_value(&[]), 3.0);
        }
        Err(e) => {
            assert!(
                !(tch::Cuda::is_available() && peftkit_distributed::Backend::Nccl.is_available()),
                "NCCL failed on a GPU machine with NCCL: {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("Nccl group") && (msg.contains("GPU") || msg.contains("no NCCL")),
                "{msg}"
            );
        }
    }
}
