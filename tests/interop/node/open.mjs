// stdin:  {"key": <key-registry entry>, "jwe": "<compact serialization>"}
// stdout: {"header": {<the protected header>}, "payload": {...}}
// A body that does not decrypt exits 1 with the error's code on stderr.
import { open, readStdinJson } from './envelope.mjs';

const input = await readStdinJson();
try {
  process.stdout.write(`${JSON.stringify(await open(input.key, input.jwe))}\n`);
} catch (error) {
  process.stderr.write(`${error.code ?? error.name}: ${error.message}\n`);
  process.exitCode = 1;
}
