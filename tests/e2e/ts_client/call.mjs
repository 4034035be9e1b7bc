// One chat completion through a Postern Service with the OpenAI TypeScript SDK, as an
// application would make it. The test gives, as one JSON argument:
//   {"baseURL": "https://svc.DOMAIN:PORT", "apiKey": "<access token>", "domain": "DOMAIN",
//    "model": "...", "content": "..."}
// DOMAIN and its subdomains are not in DNS: the connection's lookup maps them to 127.0.0.1,
// and nothing else changes (TLS is verified by Node against its own CA store, plus whatever
// NODE_EXTRA_CA_CERTS adds). Prints one JSON line: {"ok": true, ...} or {"ok": false,
// "error": ..., "codes": [...]} (the error codes along the `cause` chain), exit 0 / 1.
import OpenAI from "openai";
import { Agent, fetch as undiciFetch } from "undici";

const cfg = JSON.parse(process.argv[2]);
const domain = cfg.domain.toLowerCase();

function ours(hostname) {
  const h = hostname.toLowerCase().replace(/\.$/, "");
  return h === domain || h.endsWith("." + domain);
}

function lookup(hostname, options, callback) {
  if (!ours(hostname)) {
    callback(new Error(`test lookup: ${hostname} is not under ${domain}`));
    return;
  }
  if (options && options.all) {
    callback(null, [{ address: "127.0.0.1", family: 4 }]);
  } else {
    callback(null, "127.0.0.1", 4);
  }
}

const dispatcher = new Agent({ connect: { lookup } });
const client = new OpenAI({
  apiKey: cfg.apiKey,
  baseURL: cfg.baseURL,
  fetch: undiciFetch,
  fetchOptions: { dispatcher },
  maxRetries: 0,
  timeout: 20000,
});

function codes(err) {
  const out = [];
  for (let e = err, i = 0; e && i < 10; e = e.cause, i++) {
    if (e.code) out.push(String(e.code));
  }
  return out;
}

try {
  const r = await client.chat.completions.create({
    model: cfg.model,
    messages: [{ role: "user", content: cfg.content }],
  });
  console.log(JSON.stringify({ ok: true, id: r.id, model: r.model, content: r.choices[0].message.content }));
  await dispatcher.close();
} catch (err) {
  const chain = [];
  for (let e = err, i = 0; e && i < 10; e = e.cause, i++) chain.push(`${e.name}: ${e.message}`);
  console.log(JSON.stringify({ ok: false, status: err.status ?? null, error: chain.join(" <- "), codes: codes(err) }));
  process.exitCode = 1;
  await dispatcher.destroy();
}
