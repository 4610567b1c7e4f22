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
  // eslint-disable-next-line no-console
  console.warn(`Skipping "${name}": ${reason} (set REQUIRE_BROKERS=1 to make this a failure)`);
  const skipped: jest.Describe = describe.skip;
  skipped(name, body);
}
