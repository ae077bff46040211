// uWebSockets.js server speaking the bench_app protocol (see docs/benchmarks.md).
//
// Run with: node server.js --port 3000   (or PORT=3000 node server.js)
//
// - GET /ws/:user_id is a WebSocket; a text message whose JSON "type" is "echo" is sent back
//   unchanged to that connection only; "broadcast" is sent unchanged to every /ws connection,
//   sender included, through uWS native pub/sub (every socket subscribes to one topic and the
//   message is published once); anything else is ignored.
// - GET /stats answers {"connections": N} (open /ws connections).
// - GET /echo is a WebSocket that sends every text and binary message back unchanged.
// - UWS_COMPRESSION=shared turns on permessage-deflate with uWS's shared compressor and
//   decompressor (no context takeover, no memory per socket); otherwise it is off.
'use strict';

const uWS = require('@btc-vision/uwebsockets.js');

function parsePort() {
  const i = process.argv.indexOf('--port');
  const raw = i >= 0 ? process.argv[i + 1] : process.env.PORT || '3000';
  const port = Number.parseInt(raw, 10);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`invalid port: ${raw}`);
    process.exit(2);
  }
  return port;
}

const TOPIC = 'all';
const compression =
  process.env.UWS_COMPRESSION === 'shared'
    ? uWS.SHARED_COMPRESSOR | uWS.SHARED_DECOMPRESSOR
    : uWS.DISABLED;
// uWS compresses only what a send or publish asks it to.
const compress = compression !== uWS.DISABLED;
const decoder = new TextDecoder();
let connections = 0;

const app = uWS.App();

app.ws('/ws/:user_id', {
  compression,
  maxPayloadLength: 1024 * 1024,
  idleTimeout: 120,
  upgrade: (res, req, context) => {
    res.upgrade(
      { userId: req.getParameter(0) },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  open: (ws) => {
    connections += 1;
    ws.subscribe(TOPIC);
  },
  message: (ws, message, isBinary) => {
    if (isBinary) return;
    let kind;
    try {
      kind = JSON.parse(decoder.decode(message)).type;
    } catch {
      return;
    }
    if (kind === 'echo') {
      ws.send(message, false, compress);
    } else if (kind === 'broadcast') {
      app.publish(TOPIC, message, false, compress);
    }
  },
  close: () => {
    connections -= 1;
  },
});

app.ws('/echo', {
  compression,
  maxPayloadLength: 16 * 1024 * 1024,
  idleTimeout: 120,
  message: (ws, message, isBinary) => {
    ws.send(message, isBinary, compress);
  },
});

app.get('/stats', (res) => {
  res.writeHeader('content-type', 'application/json').end(JSON.stringify({ connections }));
});

app.any('/*', (res) => {
  res.writeStatus('404 Not Found').end();
});

const port = parsePort();
app.listen('127.0.0.1', port, (token) => {
  if (!token) {
    console.error(`failed to listen on 127.0.0.1:${port}`);
    process.exit(1);
  }
  console.log(`uws bench server listening on 127.0.0.1:${port}`);
});
