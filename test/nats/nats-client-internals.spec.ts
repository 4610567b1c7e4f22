/**
 * The NATS adapter uses one internal module of the nats client (toJsMsg). A client version that
 * moved it cannot be installed here, so the module is replaced with jest.doMock, the only way to
 * force that failure: the adapter's load must then say what is wrong and what to install.
 */
describe('NATS adapter: the nats client internal it relies on', () => {
  afterEach(() => jest.resetModules());

  it('loads with the installed nats client (toJsMsg found)', () => {
    jest.isolateModules(() => {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      expect(() => void require('../../lib/adapters/nats/nats-consumer')).not.toThrow();
    });
  });

  it('fails with an error naming the module, the installed version and what to install when toJsMsg is missing', () => {
    jest.isolateModules(() => {
      jest.doMock('nats/lib/jetstream/jsmsg', () => ({}));
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      expect(() => void require('../../lib/adapters/nats/nats-consumer')).toThrow(
        /needs the nats client's internal module 'nats\/lib\/jetstream\/jsmsg' \(toJsMsg\), as in nats 2\.29; nats 2\.\d+\.\d+ does not provide it \(it has no toJsMsg\): install nats@\^2\.29/,
      );
    });
  });
});
