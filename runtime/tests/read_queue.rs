//! The read queue on an application's own device: file ranges land in the
//! app's device-local buffers at the offsets asked, byte for byte (read
//! back by the app's own copy and compared with the files), through every
//! path the machine has; the app's timeline semaphore is signalled at its
//! value; each request reports its path, reasons and bytes; bad batches
//! are refused whole with nothing submitted; a request whose file is too
//! short or changes fails alone; dropping the queue with work in flight
//! neither hangs nor leaks.
use std::path::PathBuf;

#[path = "../../tests/common/mod.rs"]
mod common;
use common::{data, TempDir};
mod app;
use app::{App, AppBuffer};

use dmafile::{
    Destination, Gpu, PathChoice, PathKind, ReadQueue, ReadQueueOptions, ReadRequest,
    TimelineSignal,
};

fn dst(b: &AppBuffer) -> Destination {
    Destination {
        buffer: b.buffer,
        size: b.size,
    }
}

fn req(
    file: &std::path::Path,
    offset: u64,
    len: u64,
    d: Destination,
    dst_offset: u64,
) -> ReadRequest {
    ReadRequest {
        file: file.to_path_buf(),
        offset,
        len,
        dst: d,
        dst_offset,
    }
}

/// Small pieces and staging, so that requests split and staging is
/// reused and waited for.
fn small(path: PathChoice) -> ReadQueueOptions {
    ReadQueueOptions {
        path,
        staging_bytes: 128 << 10,
        piece: 64 << 10,
        import_piece: 64 << 10,
        max_imports_in_flight: 4,
    }
}

/// The tests count the process's file descriptors: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Submits under the contract these tests keep: every destination is a
/// TRANSFER_DST buffer of the app's, untouched until the batch is waited
/// for and destroyed after; `signal` is an app timeline at a new value.
fn submit(
    q: &mut ReadQueue,
    reqs: &[ReadRequest],
    signal: Option<(ash::vk::Semaphore, u64)>,
) -> dmafile::Result<dmafile::Ticket> {
    let signal = signal.map(|(semaphore, value)| TimelineSignal { semaphore, value });
    // SAFETY: per the above.
    unsafe { q.submit(reqs, signal) }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Files of odd sizes at unaligned offsets into one buffer, checked byte
/// for byte, through `path`.
fn lands(app: &App, g: &Gpu, path: PathChoice) -> dmafile::BatchReport {
    let dir = TempDir::new("rq");
    let sizes = [1usize, 3, 4095, 4097, 65_536, 300_001, 5 * 65_536 + 3];
    let files: Vec<(PathBuf, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let bytes = data(n + 777, i as u64 + 1);
            let p = dir.path(&format!("f{i}.bin"));
            std::fs::write(&p, &bytes).unwrap();
            (p, bytes)
        })
        .collect();
    let total: u64 = sizes.iter().map(|&n| n as u64 + 13).sum();
    let out = app.buffer(total, false);
    let mut q = ReadQueue::new(g, small(path)).unwrap();
    let sem = app.timeline();
    // Each file from offset 5 (unaligned), packed at odd offsets.
    let mut reqs = vec![];
    let mut at = 7u64;
    for (p, _) in &files {
        let n = std::fs::metadata(p).unwrap().len() - 777;
        reqs.push(req(p, 5, n, dst(&out), at));
        at += n + 3;
    }
    let t = submit(&mut q, &reqs, Some((sem, 1))).unwrap();
    // The app waits on its own semaphore, not on dmafile.
    assert!(
        app.wait(sem, 1, 60),
        "{path}: the app's semaphore never reached 1"
    );
    let report = q.wait(t).unwrap();
    let got = app.read_back(&out);
    for (r, (_, bytes)) in reqs.iter().zip(&files) {
        let want = &bytes[5..5 + r.len as usize];
        let have = &got[r.dst_offset as usize..(r.dst_offset + r.len) as usize];
        assert!(want == have, "{path}: {} landed wrong", r.file.display());
    }
    assert!(report.ok(), "{path}: {:?}", report.requests);
    for r in &report.requests {
        assert!(r.path.is_some() && r.gpu_copied_bytes == r.len, "{r:?}");
    }
    drop(q);
    app.destroy(out);
    // SAFETY: the app's semaphore, idle.
    unsafe { app.device.destroy_semaphore(sem, None) };
    report
}

#[test]
fn requests_land_in_the_apps_buffer_on_every_path() {
    let _serial = serial();
    let app = App::new(true);
    {
        let g = app.lend();
        let fds = open_fds();
        let r = lands(&app, &g, PathChoice::Only(PathKind::Host));
        assert!(r.requests.iter().all(|q| q.path == Some(PathKind::Host)));
        assert_eq!(r.cpu_copied_bytes(), 0, "host copies nothing on the CPU");
        let r = lands(&app, &g, PathChoice::Only(PathKind::Upload));
        let len: u64 = r.requests.iter().map(|q| q.len).sum();
        assert_eq!(r.cpu_copied_bytes(), len, "upload copies each byte once");
        let r = lands(&app, &g, PathChoice::Auto);
        for q in &r.requests {
            // No module on this host: auto skips direct with the reason.
            assert_eq!(q.path, Some(PathKind::Host), "{q:?}");
            assert!(
                q.fallbacks.iter().any(|f| f.from == PathKind::Direct),
                "{:?}",
                q.fallbacks
            );
        }
        assert_eq!(open_fds(), fds, "the queue leaked file descriptors");
    }
    app.still_works();
}

#[test]
fn a_device_without_imports_reads_through_upload_with_the_reason() {
    let _serial = serial();
    let app = App::new(false);
    {
        let g = app.lend();
        let r = lands(&app, &g, PathChoice::Auto);
        for q in &r.requests {
            assert_eq!(q.path, Some(PathKind::Upload));
            assert!(q.fallbacks.iter().any(
                |f| f.from == PathKind::Host && f.code == dmafile::ReasonCode::MissingExtension
            ));
        }
    }
    app.still_works();
}

#[test]
fn bad_batches_are_refused_whole_and_nothing_is_signalled() {
    let _serial = serial();
    let app = App::new(true);
    let dir = TempDir::new("rq-bad");
    let p = dir.path("f.bin");
    std::fs::write(&p, data(10_000, 3)).unwrap();
    {
        let g = app.lend();
        let out = app.buffer(8192, false);
        let sem = app.timeline();
        let mut q = ReadQueue::new(&g, ReadQueueOptions::default()).unwrap();
        let d = dst(&out);
        let cases: Vec<(Vec<ReadRequest>, &str)> = vec![
            (vec![req(&p, 0, 0, d, 0)], "zero-length request"),
            (vec![req(&p, 0, 8193, d, 0)], "destination too small"),
            (vec![req(&p, 0, 100, d, 8100)], "destination too small"),
            (vec![req(&p, 0, 1, d, u64::MAX)], "destination too small"),
            (
                vec![req(&p, 0, 100, d, 0), req(&p, 0, 100, d, 99)],
                "overlap request 0",
            ),
            (vec![req(&p, u64::MAX, 2, d, 0)], "overflows"),
        ];
        for (reqs, want) in cases {
            let e = submit(&mut q, &reqs, Some((sem, 1))).expect_err(want);
            let msg = e.to_string();
            assert!(
                msg.contains(want) && msg.contains("nothing was submitted"),
                "{msg}"
            );
        }
        assert_eq!(app.value(sem), 0, "a refused batch signalled the app");
        drop(q);
        app.destroy(out);
        // SAFETY: idle.
        unsafe { app.device.destroy_semaphore(sem, None) };
    }
    app.still_works();
}

#[test]
fn a_short_or_missing_file_fails_its_request_alone() {
    let _serial = serial();
    let app = App::new(true);
    let dir = TempDir::new("rq-short");
    let good = dir.path("good.bin");
    let short = dir.path("short.bin");
    let bytes = data(50_000, 4);
    std::fs::write(&good, &bytes).unwrap();
    std::fs::write(&short, data(1000, 5)).unwrap();
    let missing = dir.path("missing.bin");
    {
        let g = app.lend();
        let out = app.buffer(200_000, false);
        let sem = app.timeline();
        let mut q = ReadQueue::new(&g, ReadQueueOptions::default()).unwrap();
        let d = dst(&out);
        let reqs = vec![
            req(&good, 0, 50_000, d, 0),
            req(&short, 0, 5000, d, 60_000),
            req(&missing, 0, 10, d, 70_000),
            req(&good, 1, 49_999, d, 100_000),
        ];
        let t = submit(&mut q, &reqs, Some((sem, 7))).unwrap();
        let r = q.wait(t).unwrap();
        // (Signals of one submission are not observed at one instant:
        // the app waits on its own semaphore.)
        assert!(app.wait(sem, 7, 10), "the app's semaphore never reached 7");
        assert!(r.requests[0].ok() && r.requests[3].ok(), "{:?}", r.requests);
        let e1 = r.requests[1].error.as_deref().unwrap_or("");
        assert!(
            e1.contains("passes the end of the file (1000 bytes)"),
            "{e1}"
        );
        let e2 = r.requests[2].error.as_deref().unwrap_or("");
        assert!(e2.contains("missing.bin"), "{e2}");
        let got = app.read_back(&out);
        assert!(got[..50_000] == bytes[..]);
        assert!(got[100_000..149_999] == bytes[1..]);
        drop(q);
        app.destroy(out);
        // SAFETY: idle.
        unsafe { app.device.destroy_semaphore(sem, None) };
    }
    app.still_works();
}

/// A truncate by another process while a host-path request is in flight:
/// the lease breaks, and that request is reported failed (its bytes may be
/// the file's, but nothing vouches for them), the other completes.
#[test]
fn a_file_truncated_in_flight_fails_that_request() {
    let _serial = serial();
    let app = App::new(true);
    let dir = TempDir::new("rq-trunc");
    let a = dir.path("a.bin");
    let b = dir.path("b.bin");
    std::fs::write(&a, data(300_000, 6)).unwrap();
    std::fs::write(&b, data(300_000, 7)).unwrap();
    {
        let g = app.lend();
        let out = app.buffer(600_000, false);
        let mut q = ReadQueue::new(&g, ReadQueueOptions::default()).unwrap();
        let d = dst(&out);
        let reqs = vec![req(&a, 0, 300_000, d, 0), req(&b, 0, 300_000, d, 300_000)];
        let t = submit(&mut q, &reqs, None).unwrap();
        // Another process truncates a.bin: its open blocks on the lease
        // until the queue lets go of it.
        // (truncate(1) opens with O_NONBLOCK and gives up at once; the
        // truncate(2) system call waits for the lease, as most writers do.)
        let child = std::process::Command::new("python3")
            .args(["-c", "import os, sys; os.truncate(sys.argv[1], 1000)"])
            .arg(&a)
            .spawn()
            .unwrap();
        // Until the kernel shows the lease of a.bin breaking.
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&a).unwrap());
        let t0 = std::time::Instant::now();
        while !std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("BREAKING") && l.contains(&format!(":{ino} ")))
        {
            assert!(
                t0.elapsed().as_secs() < 20,
                "the truncate never broke the lease"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let r = q.wait(t).unwrap();
        drop(q);
        let st = wait_child(child);
        assert!(st.success());
        let e = r.requests[0].error.as_deref().unwrap_or("");
        assert!(e.contains("read lease was broken"), "{:?}", r.requests[0]);
        assert!(r.requests[1].ok(), "{:?}", r.requests[1]);
        assert_eq!(std::fs::metadata(&a).unwrap().len(), 1000);
        app.destroy(out);
    }
    app.still_works();
}

fn wait_child(mut c: std::process::Child) -> std::process::ExitStatus {
    c.wait().unwrap()
}

/// Many small files in one batch with few imports allowed in flight: all
/// land, and no file descriptor stays open.
#[test]
fn many_small_files_hold_few_descriptors() {
    let _serial = serial();
    let app = App::new(true);
    let dir = TempDir::new("rq-many");
    let files: Vec<(PathBuf, Vec<u8>)> = (0..300)
        .map(|i| {
            let bytes = data(1 + (i * 37) % 5000, i as u64);
            let p = dir.path(&format!("s{i}.bin"));
            std::fs::write(&p, &bytes).unwrap();
            (p, bytes)
        })
        .collect();
    {
        let g = app.lend();
        let fds = open_fds();
        let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
        let out = app.buffer(total, false);
        let mut q = ReadQueue::new(&g, small(PathChoice::Only(PathKind::Host))).unwrap();
        let mut at = 0;
        let reqs: Vec<ReadRequest> = files
            .iter()
            .map(|(p, b)| {
                let r = req(p, 0, b.len() as u64, dst(&out), at);
                at += b.len() as u64;
                r
            })
            .collect();
        let t = submit(&mut q, &reqs, None).unwrap();
        let r = q.wait(t).unwrap();
        assert!(r.ok(), "{:?}", r.requests.iter().find(|q| !q.ok()));
        let got = app.read_back(&out);
        let mut at = 0;
        for (_, b) in &files {
            assert!(got[at..at + b.len()] == b[..]);
            at += b.len();
        }
        drop(q);
        assert_eq!(open_fds(), fds);
        app.destroy(out);
    }
    app.still_works();
}

/// Dropping the queue with a batch in flight waits for its own copies,
/// then frees everything: no hang, no descriptor left, the device fine.
#[test]
fn dropping_the_queue_with_work_in_flight() {
    let _serial = serial();
    let app = App::new(true);
    let dir = TempDir::new("rq-drop");
    let p = dir.path("f.bin");
    std::fs::write(&p, data(2 << 20, 8)).unwrap();
    {
        let g = app.lend();
        let fds = open_fds();
        let out = app.buffer(2 << 20, false);
        let sem = app.timeline();
        let mut q = ReadQueue::new(&g, ReadQueueOptions::default()).unwrap();
        submit(&mut q, &[req(&p, 0, 2 << 20, dst(&out), 0)], Some((sem, 3))).unwrap();
        drop(q);
        assert!(app.wait(sem, 3, 10), "the batch was never signalled");
        assert_eq!(open_fds(), fds);
        app.destroy(out);
        // SAFETY: idle.
        unsafe { app.device.destroy_semaphore(sem, None) };
    }
    app.still_works();
}

/// The app stalls its own queue (a submission that waits on a semaphore it
/// signals later, as Vulkan allows); returns that semaphore.
fn stall_queue(app: &App, g: &Gpu) -> ash::vk::Semaphore {
    use ash::vk;
    let block = app.timeline();
    let sems = [block];
    let vals = [1u64];
    let stages = [vk::PipelineStageFlags::ALL_COMMANDS];
    let mut tsi = vk::TimelineSemaphoreSubmitInfo::default().wait_semaphore_values(&vals);
    let si = [vk::SubmitInfo::default()
        .wait_semaphores(&sems)
        .wait_dst_stage_mask(&stages)
        .push_next(&mut tsi)];
    let q = g.lock_queue().unwrap();
    // SAFETY: the app's own submission, under the queue's lock.
    unsafe { app.device.queue_submit(q.queue(), &si, vk::Fence::null()) }.unwrap();
    block
}

/// The same event as `a_file_truncated_in_flight_fails_that_request`, but
/// found while submit() itself waits for room (one import in flight):
/// a.bin's copy is held behind the app's stalled queue while submit()
/// waits to import b.bin, another process truncates a.bin (breaking its
/// lease), then the app lets its queue go. The failure must reach a.bin's
/// report (it was lost when found before the batch was registered).
#[test]
fn a_change_found_while_submit_waits_still_fails_that_request() {
    let _serial = serial();
    let app = App::new(true);
    let dir = TempDir::new("rq-late");
    let a = dir.path("a.bin");
    let b = dir.path("b.bin");
    std::fs::write(&a, data(300_000, 6)).unwrap();
    std::fs::write(&b, data(300_000, 7)).unwrap();
    {
        let g = app.lend();
        let out = app.buffer(600_000, false);
        let mut q = ReadQueue::new(
            &g,
            ReadQueueOptions {
                path: PathChoice::Only(PathKind::Host),
                max_imports_in_flight: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let block = stall_queue(&app, &g);
        let d = dst(&out);
        let reqs = vec![req(&a, 0, 300_000, d, 0), req(&b, 0, 300_000, d, 300_000)];
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&a).unwrap());
        let b_open = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .any(|e| std::fs::read_link(e.unwrap().path()).is_ok_and(|t| t == b))
        };
        let breaking = || {
            std::fs::read_to_string("/proc/locks")
                .unwrap()
                .lines()
                .any(|l| l.contains("BREAKING") && l.contains(&format!(":{ino} ")))
        };
        let (report, mut child) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                // submit() has opened b.bin: it waits for a.bin's copy,
                // which waits behind the app's stall.
                while !b_open() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                let child = std::process::Command::new("python3")
                    .args(["-c", "import os, sys; os.truncate(sys.argv[1], 1000)"])
                    .arg(&a)
                    .spawn()
                    .unwrap();
                while !breaking() {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                let si = ash::vk::SemaphoreSignalInfo::default()
                    .semaphore(block)
                    .value(1);
                // SAFETY: the app's own semaphore.
                unsafe { app.device.signal_semaphore(&si) }.unwrap();
                child
            });
            let t = submit(&mut q, &reqs, None).unwrap();
            let r = q.wait(t).unwrap();
            (r, h.join().unwrap())
        });
        drop(q);
        assert!(child.wait().unwrap().success());
        let e = report.requests[0].error.as_deref().unwrap_or("");
        assert!(
            e.contains("read lease was broken"),
            "{:?}",
            report.requests[0]
        );
        assert!(report.requests[1].ok(), "{:?}", report.requests[1]);
        app.destroy(out);
        // SAFETY: idle.
        unsafe { app.device.destroy_semaphore(block, None) };
    }
    app.still_works();
}

/// Test files of odd sizes, each with its bytes.
fn files(dir: &TempDir, sizes: &[usize], seed: u64) -> Vec<(PathBuf, Vec<u8>)> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let bytes = data(n, seed + i as u64);
            let p = dir.path(&format!("r{seed}-{i}.bin"));
            std::fs::write(&p, &bytes).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Two batches recorded into one command buffer of the app's (through
/// host and through upload), followed by the app's own copy of the
/// destination: nothing lands before the app submits; after, the app's own
/// commands in the same submission see the bytes, both batches report
/// their paths, and nothing stays open.
#[test]
fn requests_recorded_into_the_apps_command_buffer_land_when_the_app_submits_it() {
    use ash::vk;
    let _serial = serial();
    let app = App::new(true);
    let dir = TempDir::new("rq-record");
    let fs = files(&dir, &[1, 4095, 4097, 200_003], 40);
    {
        let g = app.lend();
        let fds = open_fds();
        let total: u64 = fs.iter().map(|(_, b)| b.len() as u64 + 5).sum::<u64>() * 2;
        let out = app.buffer(total, false);
        let host = app.buffer(total, true);
        let sem = app.timeline();
        let mut q = ReadQueue::new(&g, ReadQueueOptions::default()).unwrap();
        // Staging enough for the whole batch: a recorded batch cannot
        // reuse it before the app submits.
        let opts = ReadQueueOptions {
            staging_bytes: 512 << 10,
            ..small(PathChoice::Only(PathKind::Upload))
        };
        let mut q_up = ReadQueue::new(&g, opts).unwrap();
        let (pool, cb) = app.begin_cmd();
        let mut at = 3u64;
        let mut batch = |q: &mut ReadQueue, value: u64| {
            let reqs: Vec<ReadRequest> = fs
                .iter()
                .map(|(p, b)| {
                    let r = req(p, 0, b.len() as u64, dst(&out), at);
                    at += b.len() as u64 + 5;
                    r
                })
                .collect();
            let completes = TimelineSignal {
                semaphore: sem,
                value,
            };
            // SAFETY: `out` is the app's TRANSFER_DST buffer, untouched
            // until the semaphore; `cb` is recording, on the queue family,
            // and submitted below signalling 2.
            let t = unsafe { q.record(cb, &reqs, completes) }.unwrap();
            (t, reqs)
        };
        let (t_host, reqs_host) = batch(&mut q, 1);
        let (t_up, reqs_up) = batch(&mut q_up, 2);
        assert!(
            q.poll(t_host).unwrap().is_none(),
            "done before the app submitted"
        );
        assert!(
            q_up.poll(t_up).unwrap().is_none(),
            "done before the app submitted"
        );
        let d = &app.device;
        // SAFETY: the app's objects; the recorded copies are held by the
        // queues until `sem` reaches 2.
        unsafe {
            let barrier = [vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::TRANSFER_READ)];
            d.cmd_pipeline_barrier(
                cb,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::TRANSFER,
                vk::DependencyFlags::empty(),
                &barrier,
                &[],
                &[],
            );
            let region = [vk::BufferCopy::default().size(total)];
            d.cmd_copy_buffer(cb, out.buffer, host.buffer, &region);
        }
        app.submit_signal(&g, cb, sem, 2);
        // The app waits for its own value first. (Waiting for 1 while
        // only 2 is ever signalled trips a false "Timeout waiting for
        // timeline semaphore state to update" in validation layers 1.3.239
        // when the wait starts before the signal; the layer says it is
        // most likely its own bug.)
        assert!(app.wait(sem, 2, 60), "the app's submission never completed");
        let r_host = q.wait(t_host).unwrap();
        let r_up = q_up.wait(t_up).unwrap();
        assert!(r_host.ok() && r_up.ok(), "{r_host:?} {r_up:?}");
        assert!(r_host
            .requests
            .iter()
            .all(|r| r.path == Some(PathKind::Host)));
        assert_eq!(r_host.cpu_copied_bytes(), 0);
        assert!(r_up
            .requests
            .iter()
            .all(|r| r.path == Some(PathKind::Upload)));
        let got = app.host_bytes(&host);
        for r in reqs_host.iter().chain(&reqs_up) {
            let want = &fs.iter().find(|(p, _)| *p == r.file).unwrap().1;
            let have = &got[r.dst_offset as usize..(r.dst_offset + r.len) as usize];
            assert!(want[..] == *have, "{} landed wrong", r.file.display());
        }
        // Redeemed: the app may destroy its semaphore, and the staging
        // the recorded batch used serves the next batch without the queue
        // asking the destroyed semaphore (the validation run would say).
        // SAFETY: idle; both batches redeemed.
        unsafe {
            app.device.destroy_command_pool(pool, None);
            app.device.destroy_semaphore(sem, None);
        }
        let again = [req(&fs[3].0, 0, fs[3].1.len() as u64, dst(&out), 0)];
        let t = submit(&mut q_up, &again, None).unwrap();
        assert!(q_up.wait(t).unwrap().ok());
        drop((q, q_up));
        app.destroy(out);
        app.destroy(host);
        assert_eq!(open_fds(), fds, "recorded batches leaked descriptors");
    }
    app.still_works();
}

/// A recorded batch cannot reuse staging or wait for its own imports:
/// what does not fit fails alone with the reason, a second value for
/// the same semaphore is refused, and a batch the app never submits is
/// discarded without the queue's drop waiting for it.
#[test]
fn a_recorded_batch_that_does_not_fit_fails_its_overflow_and_can_be_discarded() {
    let _serial = serial();
    let app = App::new(true);
    let dir = TempDir::new("rq-record-big");
    // staging 128 KiB in pieces of 64 KiB: 100 KiB fits, the next does not.
    let fs = files(&dir, &[100 << 10, 100 << 10], 50);
    {
        let g = app.lend();
        let fds = open_fds();
        let out = app.buffer(1 << 20, false);
        let sem = app.timeline();
        let mut q = ReadQueue::new(&g, small(PathChoice::Only(PathKind::Upload))).unwrap();
        let (pool, cb) = app.begin_cmd();
        let reqs = vec![
            req(&fs[0].0, 0, 100 << 10, dst(&out), 0),
            req(&fs[1].0, 0, 100 << 10, dst(&out), 200 << 10),
        ];
        let completes = TimelineSignal {
            semaphore: sem,
            value: 1,
        };
        // SAFETY: as above; the app discards the recording below.
        let t = unsafe { q.record(cb, &reqs, completes) }.unwrap();
        // SAFETY: as above.
        let again = unsafe { q.record(cb, &reqs[..1], completes) }.expect_err("same value");
        assert!(
            again
                .to_string()
                .contains("completes another recorded batch"),
            "{again}"
        );
        // A value the semaphore has reached would make a batch look done
        // before the app submitted it.
        let other = app.timeline();
        app.signal(other, 5);
        let reached = TimelineSignal {
            semaphore: other,
            value: 3,
        };
        // SAFETY: as above.
        let e = unsafe { q.record(cb, &reqs[..1], reached) }.expect_err("reached value");
        assert!(e.to_string().contains("reached already"), "{e}");
        // SAFETY: idle.
        unsafe { app.device.destroy_semaphore(other, None) };
        // The app changes its mind: the recording is thrown away.
        // SAFETY: never submitted.
        unsafe {
            app.device.destroy_command_pool(pool, None);
            q.discard(t).unwrap();
        }
        assert!(q.poll(t).is_err(), "a discarded batch is not pending");
        drop(q);
        assert_eq!(app.value(sem), 0);
        assert_eq!(open_fds(), fds, "a discarded batch leaked descriptors");

        // Submitted this time: the first request lands, the second reports
        // why it was not recorded.
        let mut q = ReadQueue::new(&g, small(PathChoice::Only(PathKind::Upload))).unwrap();
        let (pool, cb) = app.begin_cmd();
        // SAFETY: as above; submitted below.
        let t = unsafe { q.record(cb, &reqs, completes) }.unwrap();
        app.submit_signal(&g, cb, sem, 1);
        let r = q.wait(t).unwrap();
        assert!(r.requests[0].ok(), "{:?}", r.requests[0]);
        let e = r.requests[1].error.as_deref().unwrap_or("");
        assert!(
            e.contains("staging are held by recorded batches") && e.contains("ReadQueue::submit"),
            "{e}"
        );
        let got = app.read_back(&out);
        assert!(got[..100 << 10] == fs[0].1[..]);
        drop(q);
        // SAFETY: idle.
        unsafe {
            app.device.destroy_command_pool(pool, None);
            app.device.destroy_semaphore(sem, None);
        }
        app.destroy(out);
    }
    app.still_works();
}

/// submit_after: the batch's copies wait on the device for the app's
/// semaphore. Until the app signals it nothing is written (the
/// destination is host-visible and read while the batch waits); after,
/// everything lands.
#[test]
fn submit_after_writes_nothing_before_the_apps_semaphore() {
    let _serial = serial();
    let app = App::new(true);
    let dir = TempDir::new("rq-after");
    let fs = files(&dir, &[70_001, 5000], 60);
    for path in [PathKind::Host, PathKind::Upload] {
        let g = app.lend();
        let out = app.buffer(200_000, true);
        let gate = app.timeline();
        let done = app.timeline();
        // Memory is reused: a pattern no file has, so a write shows.
        app.fill_host(&out, 0xa5);
        let mut q = ReadQueue::new(&g, small(PathChoice::Only(path))).unwrap();
        let reqs = vec![
            req(&fs[0].0, 0, 70_001, dst(&out), 0),
            req(&fs[1].0, 0, 5000, dst(&out), 100_000),
        ];
        let wait = TimelineSignal {
            semaphore: gate,
            value: 1,
        };
        let signal = TimelineSignal {
            semaphore: done,
            value: 1,
        };
        // SAFETY: the destination is untouched by the app's device work
        // (the test only reads its host mapping); `gate` is signalled from
        // the host below, by this thread, which submit_after does not
        // wait for: staging (128 KiB) holds the batch.
        let t = unsafe { q.submit_after(&reqs, &[wait], Some(signal)) }.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(q.poll(t).unwrap().is_none(), "{path}: done before its wait");
        assert_eq!(app.value(done), 0, "{path}: signalled before its wait");
        assert!(
            app.host_bytes(&out).iter().all(|&b| b == 0xa5),
            "{path}: wrote the app's buffer before the app's semaphore"
        );
        app.signal(gate, 1);
        let r = q.wait(t).unwrap();
        assert!(r.ok(), "{path}: {:?}", r.requests);
        assert!(app.wait(done, 1, 10));
        let got = app.host_bytes(&out);
        assert!(got[..70_001] == fs[0].1[..], "{path}: landed wrong");
        assert!(got[100_000..105_000] == fs[1].1[..], "{path}: landed wrong");
        drop(q);
        app.destroy(out);
        // SAFETY: idle.
        unsafe {
            app.device.destroy_semaphore(gate, None);
            app.device.destroy_semaphore(done, None);
        }
    }
    app.still_works();
}
