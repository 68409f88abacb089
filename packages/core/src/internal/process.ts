/**
 * The process half of a worker, shared by every transport: spawn the Python process in its own
 * process group (with the private channel's sockets as fds 3 and 4 when the transport wants
 * them), keep its registry row, tail its stderr, and stop it for sure when the scope closes.
 *
 * Spawned with `node:child_process` rather than @effect/platform's `Command`: `Command` carries
 * three stdio streams and exposes them only as Effect streams, while the local channel needs two
 * more inherited sockets and a byte-level hot path (docs/adr/0008).
 */
import { type ChildProcess, spawn as spawnChild } from "node:child_process"
import type { Socket } from "node:net"
import type { Readable, Writable } from "node:stream"
import { ProcessInfo, Registry, type RegistryError, type WorkerNotFound as RegistryNotFound } from "@snakepit/registry"
import { Chunk, Deferred, Duration, Effect, Exit, Fiber, Option, Schedule, type Scope, Stream } from "effect"
import {
  TransportError,
  type TransportErrorReason,
  WorkerCrashed,
  WorkerStartError,
  type WorkerStartReason
} from "../errors.js"
import { extractTraceback, LineTail } from "./stderr.js"

/** How the process ended. */
export interface ExitStatus {
  readonly code: number | null
  readonly signal: string | null
}

/** What to spawn. */
export interface ProcessOptions {
  readonly workerId: string
  readonly runId: string
  readonly executable: string
  readonly args: ReadonlyArray<string>
  readonly env: Readonly<Record<string, string | undefined>>
  readonly cwd: string | undefined
  /** Inherited socket pairs beyond stdio (fds 3, 4, ...). */
  readonly channels: number
  readonly gracefulTimeout: Duration.Duration
  readonly stderrTailLines: number
}

/** A spawned worker process, valid until the scope it was made in closes. */
export interface WorkerProcess {
  readonly pid: number
  readonly stdin: Writable
  /** The inherited sockets, in fd order from 3. */
  readonly channels: ReadonlyArray<Socket>
  /** The lines the process writes to its stdout, one at a time (the gRPC readiness line). */
  readonly stdoutLines: Stream.Stream<string>
  readonly exited: Effect.Effect<ExitStatus>
  readonly isRunning: Effect.Effect<boolean>
  readonly stderrTail: Effect.Effect<string>
  /** The stderr tail once the process's last lines have been read (bounded wait). */
  readonly drainedTail: Effect.Effect<string>
  /** Marks a polite stop as asked: the finalizer then gives the process its grace before signals. */
  readonly stopRequested: Effect.Effect<void>
  /** A start failure of this worker, with its stderr tail and traceback. */
  readonly startError: (
    reason: WorkerStartReason,
    detail: string,
    extra?: Partial<ConstructorParameters<typeof WorkerStartError>[0]>
  ) => WorkerStartError
  /** The failure that ended the worker before its readiness: its exit code says which. */
  readonly exitedBeforeReady: (status: ExitStatus, adapter: string) => Effect.Effect<never, WorkerStartError>
  /**
   * A channel failure: `WorkerCrashed` when the process is gone (or goes within `wait`),
   * else `TransportError` with `reason`.
   */
  readonly lost: (
    tool: string | null,
    reason: TransportErrorReason,
    detail: string,
    wait: Duration.DurationInput
  ) => Effect.Effect<never, WorkerCrashed | TransportError>
  /** SIGKILLs the process group now (a worker that broke its protocol is not worth a grace). */
  readonly kill: Effect.Effect<void>
  /** Marks the worker's registry row active (once it is ready). */
  readonly activate: Effect.Effect<void>
}

/** Sends `signal` to the whole process group led by `pid`; a group that is already gone is fine. */
const signalGroup = (pid: number, signal: NodeJS.Signals) =>
  Effect.sync(() => {
    try {
      process.kill(-pid, signal)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error
    }
  })

/** True when no live process is left in group `pgid` (zombies count as gone). */
const groupIsEmpty = (pgid: number): boolean => {
  try {
    process.kill(-pgid, 0)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return true
    if ((error as NodeJS.ErrnoException).code !== "EPERM") throw error
  }
  // Members remain; on Linux, tell the dying from zombies. Elsewhere `kill -0` is all there is.
  const live = ProcessInfo.liveProcessGroups()
  return live !== undefined && !live.has(pgid)
}

/**
 * Waits until every process of group `pgid` is gone. A SIGKILLed process dies when the kernel
 * next schedules it, so under load a tool's child can outlive the `kill` call by a few
 * milliseconds; the scope must not close before it is gone. Bounded: a process stuck in an
 * uninterruptible sleep is logged, not waited for.
 */
const awaitGroupEmpty = (pgid: number, timeout: Duration.Duration) =>
  Effect.sync(() => groupIsEmpty(pgid)).pipe(
    Effect.repeat({ until: (empty) => empty, schedule: Schedule.spaced(Duration.millis(5)) }),
    // Finalizers are uninterruptible; the wait must not be, or its timeout could never fire.
    Effect.interruptible,
    Effect.timeout(timeout),
    Effect.catchTag("TimeoutException", () =>
      Effect.logWarning(`process group ${pgid} still has live members ${Duration.format(timeout)} after SIGKILL`)
    )
  )

/** The lines of a readable stream, ending when it ends. */
const linesOf = (readable: Readable): Stream.Stream<string> =>
  Stream.async<string>((emit) => {
    let partial = ""
    readable.setEncoding("utf8")
    readable.on("data", (chunk: string) => {
      const lines = (partial + chunk).split("\n")
      partial = lines.pop() ?? ""
      if (lines.length > 0) void emit.chunk(Chunk.unsafeFromArray(lines.map((line) => line.replace(/\r$/, ""))))
    })
    readable.once("close", () => {
      if (partial !== "") void emit.single(partial)
      void emit.end()
    })
  })

const errnoOf = (error: unknown): string => {
  const e = error as NodeJS.ErrnoException
  return e.code !== undefined ? `${e.code}${e.errno !== undefined ? ` (errno ${e.errno})` : ""}` : String(error)
}

/**
 * Spawns the process in the current scope. Closing the scope stops it and every process in its
 * group, and removes its registry row once it is gone.
 */
export const spawn = (options: ProcessOptions): Effect.Effect<WorkerProcess, WorkerStartError, Scope.Scope> =>
  Effect.gen(function* () {
    const id = options.workerId
    const grace = options.gracefulTimeout
    const tail = new LineTail(options.stderrTailLines)
    const startError: WorkerProcess["startError"] = (reason, detail, extra = {}) =>
      new WorkerStartError({
        workerId: id,
        reason,
        detail,
        tried: [],
        exitCode: null,
        signal: null,
        stderrTail: tail.text(),
        traceback: extractTraceback(tail.text()),
        ...extra
      })

    // The registry row exists before the process does, and goes only after the process is
    // confirmed gone: this finalizer is registered first, so it runs after the kill below.
    const registry = yield* Effect.serviceOption(Registry)
    const recordInRegistry = <A>(
      operation: (r: Registry["Type"]) => Effect.Effect<A, RegistryError | RegistryNotFound>
    ) =>
      Option.match(registry, {
        onNone: () => Effect.void,
        onSome: (r) =>
          operation(r).pipe(
            Effect.asVoid,
            Effect.catchTags({
              RegistryError: (e) => Effect.logWarning(`registry: ${e.message}`),
              WorkerNotFound: (e) => Effect.logWarning(`registry: ${e.message}`)
            })
          )
      })
    if (Option.isSome(registry)) {
      yield* registry.value
        .reserveWorker({ workerId: id, runId: options.runId })
        .pipe(
          Effect.mapError((e) =>
            startError("spawn_failed", `could not record the worker in the registry: ${e.message}`)
          )
        )
      yield* Effect.addFinalizer(() => recordInRegistry((r) => r.removeWorker({ workerId: id, runId: options.runId })))
    }

    const exit = yield* Deferred.make<ExitStatus>()
    const child = yield* Effect.async<ChildProcess, WorkerStartError>((resume) => {
      let proc: ChildProcess
      try {
        proc = spawnChild(options.executable, [...options.args], {
          cwd: options.cwd,
          env: options.env,
          stdio: ["pipe", "pipe", "pipe", ...Array.from({ length: options.channels }, () => "pipe" as const)],
          // The worker leads its own process group: one signal reaches it and its tools' children.
          detached: true
        })
      } catch (error) {
        // Node throws at once for arguments it cannot pass to exec (a NUL byte, for instance).
        resume(Effect.fail(startError("spawn_failed", `could not spawn ${options.executable}: ${errnoOf(error)}`)))
        return
      }
      proc.once("exit", (code, signal) => Deferred.unsafeDone(exit, Exit.succeed({ code, signal })))
      if (proc.pid !== undefined) {
        resume(Effect.succeed(proc))
        return
      }
      proc.once("error", (error) => {
        const reason: WorkerStartReason =
          (error as NodeJS.ErrnoException).code === "ENOENT" ? "python_not_found" : "spawn_failed"
        resume(Effect.fail(startError(reason, `could not spawn ${options.executable}: ${errnoOf(error)}`)))
      })
    })
    const pid = child.pid as number
    // Errors after the spawn (a write to a closed pipe) are seen through the exit and the channels.
    child.on("error", () => {})
    for (const stream of child.stdio) stream?.on("error", () => {})
    yield* recordInRegistry((r) => r.attachProcess({ workerId: id, runId: options.runId, pid, pgid: pid }))

    const exited = Deferred.await(exit)
    const isRunning = Effect.map(Deferred.isDone(exit), (done) => !done)
    let stopRequested = false
    // Finalizers run uninterruptibly; the wait must be interruptible or its timeout could never fire.
    const exitsWithin = (timeout: Duration.Duration) =>
      exited.pipe(Effect.interruptible, Effect.timeout(timeout), Effect.option, Effect.map(Option.isSome))

    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        if (!(yield* isRunning)) return
        // Tools' processes that left the group are found by parentage while the worker still runs.
        const escaped = ProcessInfo.descendants(pid).filter((p) => ProcessInfo.processGroup(p.pid) !== pid)
        const killEscaped = Effect.sync(() => {
          for (const ref of escaped) ProcessInfo.killIfSame(ref)
        })
        // A worker asked to stop gets its grace period before any signal.
        if (stopRequested && (yield* exitsWithin(grace))) return yield* killEscaped
        yield* signalGroup(pid, "SIGTERM")
        if (!(yield* exitsWithin(grace))) {
          yield* signalGroup(pid, "SIGKILL")
          yield* exited
        }
        yield* killEscaped
      }).pipe(
        // Grandchildren outlive their parent unless the group is swept after it, and awaited.
        Effect.ensuring(Effect.zipRight(signalGroup(pid, "SIGKILL"), awaitGroupEmpty(pid, grace))),
        Effect.annotateLogs({ worker: id, pid })
      )
    )

    const stderrFiber = yield* linesOf(child.stderr!).pipe(
      Stream.runForEach((line) =>
        Effect.zipRight(
          Effect.sync(() => tail.push(line)),
          Effect.logDebug(line).pipe(Effect.annotateLogs({ worker: id }))
        )
      ),
      Effect.forkScoped
    )
    // Lets the tail catch up with what the process wrote before it exited.
    const drainedTail = Fiber.await(stderrFiber).pipe(
      Effect.timeout(Duration.seconds(1)),
      Effect.option,
      Effect.zipRight(Effect.sync(() => tail.text()))
    )

    const exitedBeforeReady = (status: ExitStatus, adapter: string) =>
      Effect.flatMap(drainedTail, (stderrTail) => {
        const reason: WorkerStartReason =
          status.code === 3
            ? "adapter_import_failed"
            : status.code === 4
              ? "adapter_start_failed"
              : "exited_before_ready"
        const how = status.signal ? `killed by ${status.signal}` : `exited with code ${status.code}`
        const detail =
          reason === "adapter_import_failed"
            ? `adapter "${adapter}" could not be imported (${how})`
            : reason === "adapter_start_failed"
              ? `adapter "${adapter}" raised while starting (${how})`
              : `the process ${how} before it was ready`
        return Effect.fail(
          startError(reason, detail, {
            exitCode: status.code,
            signal: status.signal,
            stderrTail,
            traceback: extractTraceback(stderrTail)
          })
        )
      })

    const lost: WorkerProcess["lost"] = (tool, reason, detail, wait) =>
      Effect.gen(function* () {
        const status = yield* exited.pipe(Effect.timeout(wait), Effect.option)
        if (Option.isNone(status)) return yield* new TransportError({ workerId: id, tool, reason, detail })
        const stderrTail = yield* drainedTail
        return yield* new WorkerCrashed({
          workerId: id,
          pid,
          exitCode: status.value.code,
          signal: status.value.signal,
          stderrTail,
          tool,
          detail
        })
      })

    return {
      pid,
      stdin: child.stdin!,
      channels: child.stdio.slice(3) as Array<Socket>,
      stdoutLines: linesOf(child.stdout!),
      exited,
      isRunning,
      stderrTail: Effect.sync(() => tail.text()),
      drainedTail,
      stopRequested: Effect.sync(() => {
        stopRequested = true
      }),
      startError,
      exitedBeforeReady,
      lost,
      kill: signalGroup(pid, "SIGKILL"),
      activate: recordInRegistry((r) => r.activateWorker({ workerId: id, runId: options.runId, pid, pgid: pid }))
    } satisfies WorkerProcess
  })
