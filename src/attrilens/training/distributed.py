"""The training-data index on Ray: read the corpus with Ray Data, featurise shards with an actor pool, fit
TrackStar's R by one reduction of per-shard second moments, and search the shards as map (top-k per shard) →
reduce (merge).

The driver owns the index directory's manifest: workers write shard files (atomic, as `store.atomic_save`) and
return their sha256; only the driver lists a shard in the manifest, after the file is on disk. A build killed
anywhere therefore resumes like a local one (finished shards are kept), and a worker that dies is restarted by
Ray and its shard retried. The index directory must be on storage every node can read and write (one machine,
or a shared filesystem), since workers write the shards where the driver's manifest says.

Same answer as the local path: the actors run the same featurising code on the same blocks (the driver cuts the
corpus with `make_corpus`), with `threads` torch threads each; the shard files are byte-identical to a local
build at the same thread count (tests/test_distributed.py checks it). R is fitted from Σ_shards ΦᵀΦ on the driver
(`fit_whitening_moments`), which the local build also uses once the corpus has at least as many blocks as
dimensions; with fewer, the local build's thin form gives the same R to float32 rounding.

How Σ ΦᵀΦ is reduced (`reduce`): "shard" returns each shard's d × d sum to the driver, which adds them in shard order
(the local build's order: byte-identical R); "worker" keeps one running sum per actor and collects each actor's
once (d × d float64 is 32 GiB at d = 2^16: one per worker, not one per shard in flight). The actors' sums add in
another order than the local build's, so R agrees with it to float64 summation rounding (relative ~1e-15 of the
statistic), not bit for bit. A restarted actor loses its sum: the driver recomputes the shards it no longer
covers from their raw files. "auto" = "shard" while one d × d float64 is at most `SHARD_REDUCE_MAX_BYTES`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrilens.corpus_formats import documents_from_rows
from attrilens.errors import AttrilensError
from attrilens.training.build import IndexBuild
from attrilens.training.gradients import Example
from attrilens.training.methods import TDAMethod
from attrilens.training.preconditioning import moment_sum
from attrilens.training.search import dot_stream, finite_scores, merge_topk, topk_merge
from attrilens.training.store import atomic_save, check_recorded_shards, remove_folder, to_dtype

RAY_INSTALL = 'pip install "attrilens[ray]"'
KILL_ONCE_AT_SHARD: int | None = None  # fault injection for the tests: a worker dies once, on this shard
REDUCE_KINDS = ("auto", "shard", "worker")
SHARD_REDUCE_MAX_BYTES = 256 * 2**20  # d ≤ 5792: a per-shard d × d float64 statistic is cheap to ship


def resolve_reduce(kind: str, dim: int) -> str:
    """The second-moment reduction a Ray build uses: "shard" (in shard order, byte-identical to the local build) or
    "worker" (one running sum per actor); "auto" picks by the size of one d × d float64 statistic."""
    if kind not in REDUCE_KINDS:
        raise AttrilensError(f"Unknown Ray reduction {kind!r}. Use one of: {', '.join(REDUCE_KINDS)}.")
    if kind == "auto":
        return "shard" if dim * dim * 8 <= SHARD_REDUCE_MAX_BYTES else "worker"
    return kind


def _ray():
    try:
        import ray
    except ImportError:
        raise AttrilensError(f"--ray needs Ray, which is not installed. Install it: {RAY_INSTALL}.") from None
    return ray


@contextmanager
def ray_cluster(address: str) -> Iterator[Any]:
    """Connect to Ray for one call: "local" starts a cluster sized to this machine (stopped afterwards), "auto"
    joins the running one, anything else is its address (checked first: nothing listening there is an error at
    once); a Ray already initialised in this process is used as it is."""
    ray = _ray()
    if not isinstance(address, str) or not address.strip():
        raise AttrilensError("--ray takes 'local', 'auto' or a cluster address such as 10.0.0.1:6379.")
    if address not in ("local", "auto"):
        _check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or ValueError by case
        ray.shutdown()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise AttrilensError(f"Cannot reach the Ray cluster at {address!r} ({first}). Start one with `ray start "
                             "--head` and pass its address, or pass --ray local.") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (Ray itself waits minutes) when nothing listens at HOST:PORT (or ray://HOST:PORT)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise AttrilensError(f"--ray {address!r} is not a cluster address. Pass HOST:PORT (e.g. 10.0.0.1:6379), "
                             "ray://HOST:PORT, auto or local.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise AttrilensError(f"Cannot reach the Ray cluster at {address!r} ({exc.strerror or exc}). Start one with "
                             "`ray start --head` and pass its address, or pass --ray local.") from None


# ---------------------------------------------------------------------- corpus
def read_corpus(path: Path | str, address: str = "local", *, text_field: str = "text",
                id_field: str = "id") -> list[dict]:
    """Documents {"id", "text"} of a JSONL file, a Parquet file or folder, or a `datasets.save_to_disk` folder, read
    with Ray Data in file order; the same checks as the local reader (non-empty text, unique ids without '#');
    `text_field` / `id_field` name the columns of the texts and ids (an id column other than "id" must exist)."""
    with ray_cluster(address):
        return _read_corpus(Path(path), text_field, id_field)


def _read_corpus(path: Path, text_field: str = "text", id_field: str = "id") -> list[dict]:
    from ray import data as rd

    if not path.exists():
        raise AttrilensError(f"Corpus {str(path)!r} does not exist. Pass a JSONL file, a Parquet file or folder, or "
                             "a `datasets` folder saved with save_to_disk.")
    rd.DataContext.get_current().execution_options.preserve_order = True
    if (path / "state.json").is_file():  # datasets.save_to_disk: Arrow stream files listed in state.json
        import pyarrow as pa

        files = [path / f["filename"] for f in json.loads((path / "state.json").read_text()).get("_data_files", [])]
        ds = rd.from_arrow([pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files])
    elif path.is_dir() or path.suffix == ".parquet":
        ds = rd.read_parquet(str(path))
    elif path.suffix in (".jsonl", ".json"):
        ds = rd.read_json(str(path), lines=True)
    else:
        raise AttrilensError(f"Cannot tell the format of {str(path)!r}. Pass a .jsonl or .parquet file, or a "
                             "`datasets` folder saved with save_to_disk.")
    names = ds.schema().names
    for field, default, option in ((text_field, "text", "--text-field"), (id_field, "id", "--id-field")):
        if field not in names and (field != "id" or default != "id"):
            raise AttrilensError(f"The corpus {str(path)!r} has no {field!r} column (it has {', '.join(names)}). Name "
                                 f"the column of document {default}s with {option} (or name it '{default}').")
    rows = ds.select_columns(list(dict.fromkeys(c for c in (id_field, text_field) if c in names))).take_all()
    docs = documents_from_rows((f"{path}: row {k}", k, {"id": row.get(id_field), "text": row.get(text_field)})
                               for k, row in enumerate(rows, 1))
    if not docs:
        raise AttrilensError(f"The corpus {str(path)!r} has no documents.")
    return docs


# ---------------------------------------------------------------------- workers
class Featuriser:
    """One Ray actor: the model and method loaded once, then shard after shard (raw, stored or finished features)."""

    def __init__(self, spec: dict[str, Any]):
        from attrilens.lm import LM
        from attrilens.training.methods import TDA_METHODS

        torch.set_num_threads(spec["threads"])
        self.spec = spec
        device = "cuda" if spec["gpu"] and torch.cuda.is_available() else "cpu"
        lm = LM.from_pretrained(spec["model_path"], dtype=getattr(torch, spec["model_dtype"]), device=device,
                                chat_template=spec["chat_template"])
        if lm.fingerprint() != spec["fingerprint"]:
            raise AttrilensError(f"The Ray worker loaded another model from {spec['model_path']} than the driver's. "
                                 "Give every node the same model directory.")
        cls = TDA_METHODS.get(spec["method"])
        self.m: TDAMethod = cls(cls.make_options(**spec["options"]), lm, spec["model_dir"], batch_size=spec["batch_size"])
        self.out = Path(spec["out"])
        self.moments: torch.Tensor | None = None  # reduce="worker": this actor's running Σ ΦᵀΦ, and its shards
        self.moment_starts: list[int] = []

    def pid(self) -> int:
        """This worker's process id (the tests kill it)."""
        return os.getpid()

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Take the method's fitted state from the driver (the broadcast of R^(-1/2) or the estimated moments)."""
        if state:
            self.m.load(state, None)

    def run(self, stage: str, i: int, start: int, tokens: list[list[int]], names: list[str]) -> dict[str, Any]:
        """Write shard i (rows start…) of a stage: "raw" (raw features, + their ΣΦᵀΦ), "stored" (finished features
        of methods without a fit), "finish" (the fitted state applied to the raw shard) or "moments" (ΣΦᵀΦ of a raw
        shard written by an earlier run)."""
        if self.spec.get("kill_once_at") == i:
            marker = self.out / f".kill-once-{i}"
            if not marker.exists():
                marker.touch()
                os._exit(1)
        raw_file = self.out / "raw" / f"shard-{i:05d}.npy"
        if stage == "moments":
            return self._moments(start, torch.from_numpy(np.load(raw_file)))
        if stage == "finish":
            x = torch.from_numpy(np.load(raw_file))
        else:
            x = self.m.featurize([Example.block(t, n) for t, n in zip(tokens, names, strict=True)])
        if stage == "raw":
            arr = x.numpy().astype(np.float32)
            sha = atomic_save(raw_file, arr)
            return {"file": f"raw/shard-{i:05d}.npy", "sha256": sha, **self._moments(start, torch.from_numpy(arr))}
        arr = to_dtype(self.m.finish(x), self.spec["dtype"], names)
        return {"file": f"shards/shard-{i:05d}.npy", "sha256": atomic_save(self.out / "shards" / f"shard-{i:05d}.npy", arr)}

    def _moments(self, start: int, raw: torch.Tensor) -> dict[str, Any]:
        """A raw shard's ΦᵀΦ: returned (reduce="shard") or added to this actor's running sum (reduce="worker")."""
        if self.spec["reduce"] == "shard":
            return {"moments": moment_sum(raw).numpy()}
        if self.moments is None:
            self.moments = moment_sum(raw)
        else:  # in place: no second d × d temporary
            f = raw.double()
            self.moments.addmm_(f.T, f)
        self.moment_starts.append(start)
        return {}

    def take_moments(self) -> dict[str, Any]:
        """This actor's running Σ ΦᵀΦ and the shards (row starts) in it, then an empty sum (reduce="worker")."""
        out = {"starts": self.moment_starts, "moments": None if self.moments is None else self.moments.numpy()}
        self.moments, self.moment_starts = None, []
        return out


def _spec(m: TDAMethod, out: Path, dtype: str, batch_size: int, threads: int, gpu: bool, reduce: str) -> dict[str, Any]:
    lm = m.lm
    if not lm.name or not Path(lm.name).is_dir():
        raise AttrilensError("A Ray build loads the model in every worker from its directory, but this model was not "
                             "loaded from one. Load it with LM.from_pretrained(DIR) (the CLI does).")
    return {"model_path": lm.name, "model_dtype": str(lm.model.dtype).removeprefix("torch."), "fingerprint":
            lm.fingerprint(), "chat_template": lm.use_chat_template, "method": m.name, "options": m.options.to_dict(),
            "model_dir": str(m.model_dir) if m.model_dir else None, "batch_size": batch_size, "out": str(out.resolve()),
            "dtype": dtype, "threads": threads, "gpu": gpu, "kill_once_at": KILL_ONCE_AT_SHARD, "reduce": reduce}


class _Pool:
    """Actors fed shard jobs, two in flight each; results come back as they finish."""

    def __init__(self, ray, spec: dict[str, Any], workers: int | None):
        self.ray = ray
        res = ray.cluster_resources()
        gpus, cpus, threads = int(res.get("GPU", 0)), int(res.get("CPU", 0)), spec["threads"]
        n = workers if workers is not None else (gpus or max(1, cpus // threads))
        if n < 1:
            raise AttrilensError(f"--ray-workers must be at least 1, got {n}.")
        # an actor the cluster cannot place never starts, and the shards sent to it would wait for ever
        if gpus and n > gpus:
            raise AttrilensError(f"--ray-workers {n} asks for {n} actors with a GPU each, but the Ray cluster has "
                                 f"{gpus} GPU(s). Pass --ray-workers {gpus} or fewer, or add GPU nodes first.")
        if n * threads > cpus:
            raise AttrilensError(f"--ray-workers {n} asks for {n * threads} CPUs ({threads} torch thread(s) an actor), "
                                 f"but the Ray cluster has {cpus}. Pass --ray-workers {max(1, cpus // threads)} or "
                                 "fewer, or add nodes first.")
        spec = {**spec, "gpu": gpus > 0}
        actor = ray.remote(num_cpus=spec["threads"], num_gpus=1 if gpus else 0, max_restarts=3,
                           max_task_retries=3)(Featuriser)
        self.actors = [actor.remote(spec) for _ in range(n)]
        self.size = n

    def close(self) -> None:
        """Stop the actors (their CPUs and GPUs go back to the cluster; a write in flight leaves only a .tmp file)."""
        for a in self.actors:
            self.ray.kill(a)

    def broadcast(self, state: dict[str, torch.Tensor]) -> None:
        ref = self.ray.put(state)
        self.ray.get([a.load.remote(ref) for a in self.actors])

    def take_moments(self) -> Iterator[dict[str, Any]]:
        """Each actor's running Σ ΦᵀΦ, one at a time (the driver holds its sum and one more). An actor that died
        (restarted by Ray with an empty sum) gives what it gathered since; the caller finds the shards missing."""
        for a in self.actors:
            try:
                yield self.ray.get(a.take_moments.remote())
            except self.ray.exceptions.RayError:  # gone for good: its shards are recomputed on the others
                yield {"starts": [], "moments": None}

    def map(self, jobs: Sequence[tuple], desc: str, progress: bool, total: int, done: int) -> Iterator[tuple]:
        """Yield (job, result) as workers finish; a worker error becomes one line naming the shard."""
        from tqdm import tqdm

        ray = self.ray
        bar = tqdm(total=total, initial=done, desc=desc, file=sys.stderr, disable=not progress, mininterval=1.0,
                   dynamic_ncols=True)
        queue, flight, k = list(jobs), {}, 0
        try:
            while queue or flight:
                while queue and len(flight) < 2 * self.size:
                    job = queue.pop(0)
                    flight[self.actors[k % self.size].run.remote(*job)] = job
                    k += 1
                ready, _ = ray.wait(list(flight), num_returns=1)
                job = flight.pop(ready[0])
                yield job, _get(ray, ready[0], job)
                bar.update(len(job[4]))
        finally:
            bar.close()
            for ref in flight:
                ray.cancel(ref, force=False)


def _get(ray, ref, job: tuple) -> dict[str, Any]:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
        if isinstance(cause, AttrilensError):
            raise AttrilensError(str(cause)) from None
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1][:200]
        raise AttrilensError(f"A Ray worker failed on shard {job[1]} ({first}). Finished shards are kept: fix it and "
                             "rerun the same build to resume.") from None
    except ray.exceptions.RayError as exc:  # the worker died more often than Ray restarts it, or the node went away
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise AttrilensError(f"A Ray worker died on shard {job[1]} ({first}). Finished shards are kept: rerun the "
                             "same build to resume.") from None


# ---------------------------------------------------------------------- build
class RayRunner:
    """`build.LocalRunner` on Ray: the same shard files, written by an actor pool; the driver commits them and fits
    R from the reduced second moments (never every feature on one node; `reduce`: see the module's doc)."""

    def __init__(self, *, address: str, workers: int | None = None, batch_size: int = 16, threads: int = 1,
                 reduce: str = "auto"):
        self.address, self.workers, self.batch_size, self.threads, self.reduce = (address, workers, batch_size,
                                                                                  threads, reduce)
        self.pool: _Pool | None = None
        self._moments: _OrderedSum | None = None

    @contextmanager
    def session(self, build: IndexBuild) -> Iterator[None]:
        """The cluster and the actor pool, held while the build's phases run; the raw folder goes afterwards."""
        m, out, man = build.method, build.out, build.manifest
        self.reduce = resolve_reduce(self.reduce, m.dim)
        if m.needs_fit and not getattr(m, "fits_moments", False):
            raise AttrilensError(f"{m.name} fits its state from every raw feature at once, which a Ray build does not "
                                 "gather on one node. Build it without --ray.")
        check_recorded_shards(out, man.raw_shards + man.shards)
        with ray_cluster(self.address) as ray:
            spec = _spec(m, out, man.dtype, self.batch_size, self.threads, False, self.reduce)
            self.pool = _Pool(ray, spec, self.workers)  # may refuse the size
            for folder in ("raw", "shards"):
                (out / folder).mkdir(exist_ok=True)
            try:
                yield
            finally:
                self.pool.close()
                self.pool = None
        remove_folder(out / "raw")

    def _shards(self, build: IndexBuild) -> list[tuple[int, int, range]]:
        n, size = len(build.blocks), build.manifest.shard_size
        return [(i, start, range(start, min(start + size, n))) for i, start in enumerate(range(0, n, size))]

    def _jobs(self, build: IndexBuild, stage: str, key: str) -> tuple[list[tuple], int]:
        """(stage, shard, start, tokens, names) of the shards `key` does not list yet, and the rows it does."""
        blocks, done = build.blocks, {s["start"] for s in build.manifest.shard_list(key)}
        todo = [(stage, i, st, [blocks.tokens[r] for r in rows], [blocks.block_id(r) for r in rows])
                for i, st, rows in self._shards(build) if st not in done]
        return todo, sum(len(rows) for _, st, rows in self._shards(build) if st in done)

    def _commit(self, build: IndexBuild, key: str, job: tuple, res: dict) -> None:
        """The driver alone lists a shard, once it is on disk."""
        records = build.manifest.shard_list(key)
        records.append({"file": res["file"], "start": job[2], "rows": len(job[4]), "sha256": res["sha256"]})
        records.sort(key=lambda s: s["start"])
        build.save()

    def _desc(self, build: IndexBuild) -> str:
        return f"featurise {build.method.name} on Ray ({self.pool.size} workers)"

    def _broadcast_prepared(self, build: IndexBuild) -> None:
        state = build.method.state()  # second moments estimated by `prepare` on the driver, if any
        if state:
            self.pool.broadcast(state)

    def stored(self, build: IndexBuild) -> None:
        self._broadcast_prepared(build)
        todo, done = self._jobs(build, "stored", "shards")
        for job, res in self.pool.map(todo, self._desc(build), build.progress, len(build.blocks), done):
            self._commit(build, "shards", job, res)

    def raw(self, build: IndexBuild) -> None:
        """Raw shards, and every raw shard's ΣΦᵀΦ (those of an earlier run recomputed by a worker)."""
        self._broadcast_prepared(build)
        shards = self._shards(build)
        todo, done = self._jobs(build, "raw", "raw_shards")
        self._moments = _OrderedSum([st for _, st, _ in shards])
        pending = {j[2] for j in todo}
        again = [("moments", i, st, [], []) for i, st, _ in shards if st not in pending]
        for job, res in self.pool.map(again + todo, self._desc(build), build.progress, len(build.blocks), done):
            if job[0] == "raw":
                self._commit(build, "raw_shards", job, res)
            if self.reduce == "shard":
                self._moments.add(job[2], torch.from_numpy(np.array(res.pop("moments"))))

    def fit(self, build: IndexBuild, eval_raw: torch.Tensor | None) -> dict[str, Any]:
        """The one reduction: Σ ΦᵀΦ (in shard order, or over the workers' sums), eigendecomposed on the driver."""
        total = (self._moments.total() if self.reduce == "shard"
                 else _reduce_over_workers(self.pool, self._shards(build)))
        return {**build.method.fit_moments(total, len(build.blocks), eval_raw), "moments_reduce": self.reduce}

    def finish(self, build: IndexBuild) -> None:
        self.pool.broadcast(build.method.state())  # R^(-1/2) to every worker
        todo, done = self._jobs(build, "finish", "shards")
        for job, res in self.pool.map([(j[0], j[1], j[2], [], j[4]) for j in todo], "apply the fitted state on Ray",
                                      build.progress, len(build.blocks), done):
            self._commit(build, "shards", job, res)

    def cleanup(self, build: IndexBuild) -> None:
        """The raw folder goes when the session ends (a worker may still hold a file in it until then)."""


def _reduce_over_workers(pool: _Pool, all_shards: list[tuple], rounds: int = 3) -> torch.Tensor:
    """reduce="worker": add the actors' running sums; shards no sum covers (an actor died and Ray restarted it
    empty) are recomputed from their raw files, up to `rounds` times. A shard counted twice is an error."""
    total, covered = None, []
    for _ in range(rounds):
        for part in pool.take_moments():
            covered += part["starts"]
            if part["moments"] is None:
                continue
            if total is None:
                total = np.array(part["moments"])  # a writable copy; later parts are added from the object store
            else:
                np.add(total, part["moments"], out=total)
        if len(set(covered)) != len(covered):
            raise AttrilensError("The second-moment reduction counted a shard twice. Rerun the same build.")
        missing = [(i, st) for i, st, _ in all_shards if st not in set(covered)]
        if not missing:
            return torch.from_numpy(total)
        for _ in pool.map([("moments", i, st, [], []) for i, st in missing], "second moments again", False, 0, 0):
            pass
    raise AttrilensError("The second-moment reduction is missing shards after Ray restarted its workers "
                         f"{rounds} times. Rerun the same build.")


class _OrderedSum:
    """Σ of per-shard d × d statistics added in shard order whatever order they arrive in (a deterministic sum, the
    local build's), holding only those that arrived early."""

    def __init__(self, starts: list[int]):
        self.order, self.next, self.early, self.sum = sorted(starts), 0, {}, None

    def add(self, start: int, x: torch.Tensor) -> None:
        self.early[start] = x
        while self.next < len(self.order) and self.order[self.next] in self.early:
            y = self.early.pop(self.order[self.next])
            self.sum = y if self.sum is None else self.sum + y
            self.next += 1

    def total(self) -> torch.Tensor:
        if self.next != len(self.order):
            raise AttrilensError("The second-moment reduction is missing shards. Rerun the same build.")
        return self.sum


# ---------------------------------------------------------------------- search
def _shard_topk(path: str, start: int, q: np.ndarray, bounded: bool, k: int):
    """Map: exact top-k and bottom-k of one memory-mapped shard (global row ids); non-finite scores are an error."""
    arr = np.load(path, mmap_mode="c", allow_pickle=False)
    stream = dot_stream([(start, arr)], torch.from_numpy(np.array(q)), bounded=bounded)
    return topk_merge(finite_scores(stream, f"Shard {path}"), arr.shape[0], k)


def search_ray(path: Path, shards: Sequence[dict], q: torch.Tensor, k: int, bounded: bool, address: str):
    """Exact top-k / bottom-k of x·q over an index's shards: one Ray task per shard (map), merged here (reduce)."""
    with ray_cluster(address) as ray:
        task = ray.remote(num_cpus=1)(_shard_topk)
        qref = ray.put(q.float().numpy())
        refs = [task.remote(str((Path(path) / s["file"]).resolve()), s["start"], qref, bounded, k) for s in shards]
        try:
            parts = ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, AttrilensError):
                raise AttrilensError(str(cause)) from None
            raise
    return merge_topk(parts, k)
