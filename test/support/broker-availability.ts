/**
 * Integration suites run against real brokers when they are reachable. On a laptop without them a
 * suite is skipped with its reason printed; with REQUIRE_BROKERS=1 (CI) an unreachable broker
 * fails the run instead. test/support/global-setup.ts probes the brokers once and passes the
 * results to the test workers through the environment.
 */
export const REQUIRE_BROKERS = process.env.REQUIRE_BROKERS === '1' || process.env.REQUIRE_BROKERS === 'true';

export function unavailableReason(broker: string): string | undefined {
  return process.env[`DUCTAPE_TEST_UNAVAILABLE_${broker.toUpperCase()}`] || undefined;
}

/**
 * Prints why a suite or test is skipped, straight to stderr: Jest drops the console output of a
 * test file whose tests are all skipped, so a console.warn there would never be seen.
 */
export function printSkip(message: string): void {
  process.stderr.write(`${message}\n`);
}

/** `describe`, or a printed reason and `describe.skip` when the broker cannot be reached (never in CI). */
export function describeWithBroker(broker: string, name: string, body: () => void): void {
  const reason = unavailableReason(broker);
  if (!reason) return describe(name, body);
  if (REQUIRE_BROKERS) {
    describe(name, () => {
      it(`${broker} is reachable (REQUIRE_BROKERS=1)`, () => {
        throw new Error(`${broker} is required but unreachable: ${reason}`);
      });
    });
    return;
  }
  printSkip(`Skipping "${name}": ${reason} (set REQUIRE_BROKERS=1 to make this a failure)`);
  const skipped: jest.Describe = describe.skip;
  skipped(name, body);
}

/**
 * Tests that restart, stop or disconnect a broker server (on a laptop, the user's own broker) run
 * only when asked: REQUIRE_BROKERS=1, as CI sets, or DUCTAPE_TEST_RESTART_BROKERS=1.
 */
export const RESTART_BROKERS_VARIABLE = 'DUCTAPE_TEST_RESTART_BROKERS';
export const RESTART_BROKERS =
  REQUIRE_BROKERS || process.env[RESTART_BROKERS_VARIABLE] === '1' || process.env[RESTART_BROKERS_VARIABLE] === 'true';

type TestFn = (title: string, fn: jest.ProvidesCallback, timeout?: number) => void;

/**
 * `it` for the tests of a suite on `broker` that need more than the broker: `controlsServer` says
 * what they do to the server (restart, stop, disconnect: run only under RESTART_BROKERS), `tool` a
 * server-side tool global-setup.ts probes (rabbitmqctl). A skipped test prints its suite, its title
 * and why; a test that was asked for (REQUIRE_BROKERS=1, or the opt-in for a server-control test)
 * fails when its tool is missing. When the broker itself is unreachable, describeWithBroker
 * already skips (or fails) the whole suite, with its reason.
 */
export function itNeeding(broker: string, suite: string, needs: { controlsServer?: string; tool?: string }): TestFn {
  if (unavailableReason(broker)) return it;
  const skip = (title: string, reason: string, fn: jest.ProvidesCallback, timeout?: number) => {
    printSkip(`Skipping "${suite} > ${title}": ${reason}`);
    const skipped: jest.It = it.skip;
    skipped(title, fn, timeout);
  };
  return (title, fn, timeout) => {
    if (needs.controlsServer && !RESTART_BROKERS) {
      return skip(title, `it ${needs.controlsServer}; set ${RESTART_BROKERS_VARIABLE}=1 (or REQUIRE_BROKERS=1) to run it`, fn, timeout);
    }
    const missing = needs.tool ? unavailableReason(needs.tool) : undefined;
    if (!missing) return it(title, fn, timeout);
    if (REQUIRE_BROKERS || needs.controlsServer) {
      const why = REQUIRE_BROKERS ? 'REQUIRE_BROKERS=1' : `${RESTART_BROKERS_VARIABLE}=1`;
      return it(title, () => {
        throw new Error(`${needs.tool} is required (${why}) but unavailable: ${missing}`);
      });
    }
    skip(title, `it needs ${needs.tool}: ${missing} (set REQUIRE_BROKERS=1 to make this a failure)`, fn, timeout);
  };
}
