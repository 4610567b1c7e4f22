// Starts fauxqs (an SQS and SNS emulator from npm, kept in memory) on 127.0.0.1 with a free port,
// prints its address as the first line on stdout, and stops when its standard input ends: the
// test setup holds the other end, so it never outlives the test run. It is an ES module only,
// hence a launcher of its own instead of loading it into Jest.
import { startFauxqs } from 'fauxqs';

const server = await startFauxqs({ port: 0, logger: false });
process.stdout.write(`${server.address}\n`);
process.stdin.resume();
process.stdin.on('end', async () => {
  await server.stop();
  process.exit(0);
});
