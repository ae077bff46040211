// Types of svc-ws.js, the svc-ws gateway's JavaScript client (served at GET /client.d.ts).

/** A position in a room's stream: the offset counts the room's publications from 1; the
 * epoch names the stream (it changes when the history is lost). */
export interface Position {
  offset: number;
  epoch: string;
}

export interface Backoff {
  /** The first delay's cap, in ms. Default 500. */
  base?: number;
  /** The largest cap, in ms (the cap doubles per failed attempt up to it). Default 10000. */
  max?: number;
  /** The random part of each delay, 0..1: the delay is `cap * (1 - jitter * random())`;
   * 1 is full jitter. Default 1. */
  jitter?: number;
}

export interface ConnectOptions {
  /** The gateway's `/ws` (ws:, wss:, or http(s): turned into ws(s):; relative to the page in a
   * browser). Default in a browser: `/ws` of the page's origin. */
  url?: string;
  /** A JWT, sent as the `["bearer", token]` subprotocol (as `?token=` if it has characters a
   * subprotocol cannot carry). */
  token?: string;
  /** Called before every connection (the first and each reconnect) for a fresh token; wins
   * over `token`. A rejection is reported as `error` and retried with backoff. */
  getToken?: () => Promise<string | null | undefined> | string | null | undefined;
  /** Rooms to join on every connection. */
  rooms?: string[];
  /** Positions to resume from (what `positions()` returned before a page reload); these rooms
   * are joined too. */
  positions?: Record<string, Position>;
  /** Reconnect backoff after an abnormal close. */
  backoff?: Backoff;
  /** After 1012 "service restart": reconnect after a random pause of up to this many ms.
   * Default 1000. */
  restartDelay?: number;
  /** A connection attempt that is not open within this many ms is abandoned. Default 10000. */
  connectTimeout?: number;
  /** An `echo` every `interval` ms; no answer within `timeout` ms: the connection is dead and
   * is replaced. Default `{interval: 25000, timeout: 10000}`; `false` disables it. */
  heartbeat?: { interval?: number; timeout?: number } | false;
  /** Requests made while not connected wait for the connection, at most this many.
   * Default 1000. */
  maxQueued?: number;
  /** The WebSocket constructor (default: `globalThis.WebSocket`). */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
}

/** A message to the application: from a room (`room` set), or to its user. In a room with
 * history it has the publication's position. */
export interface Message {
  room?: string;
  from: string;
  data: unknown;
  offset?: number;
  epoch?: string;
}

/** The answer to a join in a room with history. */
export interface Joined {
  type: "joined";
  room: string;
  /** false: what was missed since the position given cannot be replayed (`lost` fires). */
  recovered: boolean;
  offset: number;
  epoch: string;
  /** The number of replayed messages that follow. */
  replayed: number;
  id?: unknown;
}

/** The answer to a join in a room without history. */
export interface Ack {
  type: "ack";
  id?: unknown;
}

/** Messages of a room were lost for good: reload what the room shows. */
export interface Lost extends Position {
  room: string;
  /** "joined": a re-join could not replay what was missed; "recovery": the gateway said so
   * (the room's history was lost, or a gap between gateways could not be filled). */
  reason: "joined" | "recovery";
}

export interface Presence {
  room: string | null;
  users: string[];
}

export interface History extends Position {
  room: string;
  publications: Message[];
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** Whether the client reconnects. */
  reconnect: boolean;
}

export interface Reconnecting {
  /** Failed attempts so far (not counting a 1012). */
  attempt: number;
  /** ms until the next attempt. */
  delay: number;
  code: number;
  reason: string;
}

export interface Events {
  message: Message;
  joined: Joined | Ack;
  lost: Lost;
  presence: Presence;
  open: { attempt: number };
  close: CloseInfo;
  reconnecting: Reconnecting;
  error: Error;
}

/** An error answer of the gateway, or a request the connection dropped before its answer. */
export class RequestError extends Error {
  /** The close code, when the connection closed before the answer. */
  code?: number;
  /** The request. */
  request?: object;
}

export class Client {
  constructor(options: ConnectOptions);
  readonly state: "connecting" | "open" | "reconnecting" | "closed";
  /** The current WebSocket, null between connections. */
  readonly socket: WebSocket | null;
  positions(): Record<string, Position>;
  on<E extends keyof Events>(event: E, callback: (value: Events[E]) => void): () => void;
  off<E extends keyof Events>(event: E, callback: (value: Events[E]) => void): void;
  join(room: string, options?: { since?: Position }): Promise<Joined | Ack>;
  leave(room: string): Promise<void>;
  /** Resolves with the publication's position in a room with history. */
  publish(room: string, data: unknown): Promise<Position | undefined>;
  send(to: string, data: unknown): Promise<void>;
  broadcast(data: unknown): Promise<void>;
  history(room: string, options?: { since?: Position; limit?: number }): Promise<History>;
  presence(room?: string | null): Promise<Presence>;
  close(code?: number, reason?: string): Promise<void>;
  /** For tests: drop the connection as a network failure would. */
  _dropForTest(): void;
}

export function connect(options: ConnectOptions): Client;
