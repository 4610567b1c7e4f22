// Starts fauxqs (an SQS and SNS emulator from npm, kept in memory) on 127.0.0.1 with a free port,
// prints its address as the first line on stdout, and stops when its standard input ends: the
// test setup holds the other end, so it never outlives the test run. It is an ES module only,
// hence a launcher of its own instead of loading it into Jest. buildApp rather than startFauxqs,
// which listens on every interface: a test server stays on loopback.
import { buildApp } from 'fauxqs';

const app = buildApp({ logger: false });
await app.listen({ port: 0, host: '127.0.0.1' });
process.stdout.write(`http://127.0.0.1:${app.server.address().port}\n`);
process.stdin.resume();
process.stdin.on('end', async () => {
  await app.close();
  process.exit(0);
});
