/**
 * `SnakepitTest.layer(...)`: the `Snakepit` service backed by fake workers, composable wherever
 * `SnakepitPool.layer` is. Tools are scripted Effects, so `TestClock` controls their latency.
 *
 * @since 0.1.0
 */
import {
  type ConfigError,
  type PoolStartError,
  type Snakepit,
  type SnakepitOptions,
  SnakepitPool
} from "@snakepit/core"
import { Context, Effect, Layer } from "effect"
import * as FakeWorkers from "./FakeWorkers.js"

/** Options of the test layer: the fake workers' script, and the pool's own options. */
export interface SnakepitTestOptions extends FakeWorkers.FakeWorkersOptions {
  /** Pool options (size, queue, affinity, ...). Default: one worker. */
  readonly pool?: SnakepitOptions
}

/** Inspect and steer the fake workers behind a `SnakepitTest.layer`. */
export class SnakepitTest extends Context.Tag("@snakepit/testkit/SnakepitTest")<
  SnakepitTest,
  FakeWorkers.FakeWorkers
>() {
  /** `Snakepit` backed by fake workers, plus `SnakepitTest` to inspect them. */
  static readonly layer = (
    options: SnakepitTestOptions = {}
  ): Layer.Layer<Snakepit | SnakepitTest, PoolStartError | ConfigError> =>
    Layer.unwrapEffect(
      Effect.sync(() => {
        const fake = FakeWorkers.make(options)
        return Layer.merge(
          SnakepitPool.layerWithoutDependencies({ size: 1, ...options.pool }).pipe(Layer.provide(fake.layer)),
          Layer.succeed(SnakepitTest, fake)
        )
      })
    )
}

/** The calls the fake workers received, in order. */
export const calls = Effect.map(SnakepitTest, (fake) => fake.calls)
