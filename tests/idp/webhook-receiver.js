// A webhook receiver for devicegate's tests: it checks every request's Standard Webhooks
// signature with the `standardwebhooks` library (npm), not with devicegate's own code, and
// appends what it received to RECORD as one JSON line each:
//   {"verified": true, "id", "type", "data"} or {"verified": false, "error"}
// Environment: WEBHOOK_SECRET (whsec_…), RECORD (file), MODE (`ok`, or `hold`: answer nothing
// until GET /release), TLS_CERT and TLS_KEY (serve HTTPS). Prints its port on stdout.
import { appendFileSync } from "node:fs";
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { Webhook } from "standardwebhooks";

const wh = new Webhook(process.env.WEBHOOK_SECRET);
const record = process.env.RECORD;
let holding = process.env.MODE === "hold";
const held = [];
let answered = 0;

function handle(req, res) {
  if (req.method === "GET" && req.url === "/release") {
    holding = false;
    for (const h of held.splice(0)) h();
    res.end(JSON.stringify({ released: true }));
    return;
  }
  if (req.method === "GET" && req.url === "/stats") {
    res.end(JSON.stringify({ answered, held: held.length }));
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    let line;
    let status = 204;
    try {
      const payload = wh.verify(body, req.headers);
      line = { verified: true, id: req.headers["webhook-id"], type: payload.type, timestamp: payload.timestamp, data: payload.data };
    } catch (e) {
      line = { verified: false, error: String(e) };
      status = 400;
    }
    const answer = () => {
      appendFileSync(record, JSON.stringify(line) + "\n");
      answered += 1;
      res.statusCode = status;
      res.end();
    };
    if (holding) held.push(answer);
    else answer();
  });
}

const server = process.env.TLS_CERT
  ? https.createServer({ cert: readFileSync(process.env.TLS_CERT), key: readFileSync(process.env.TLS_KEY) }, handle)
  : http.createServer(handle);
server.listen(0, "127.0.0.1", () => {
  console.log(server.address().port);
});
