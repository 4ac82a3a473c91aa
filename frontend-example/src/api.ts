// The GraphQL side of the example app: HTTP for queries and mutations, graphql-ws for the
// live events. This is the part to copy into your own app.
import { createClient, type Client } from 'graphql-ws';

export type Verdict =
  | 'ACCEPTED' | 'WRONG_ANSWER' | 'TIME_LIMIT_EXCEEDED' | 'MEMORY_LIMIT_EXCEEDED'
  | 'OUTPUT_LIMIT_EXCEEDED' | 'RUNTIME_ERROR' | 'COMPILATION_ERROR' | 'CANCELLED'
  | 'INTERNAL_ERROR';

export interface Language { id: string; name: string; version: string; compiled: boolean }

export interface TestResult {
  index: number; verdict: Verdict; timeMs: number; wallTimeMs: number; memoryKb: number;
  exitCode: number | null; signal: number | null; stdout: string; stderr: string; truncated: boolean;
}

export interface Submission {
  id: string; language: string; status: string; verdict: Verdict | null;
  compileOutput: string | null; tests: TestResult[]; testCount: number;
  timeMs: number | null; memoryKb: number | null; message: string | null;
}

interface Base { seq: number; at: string }
export type SubmissionEvent = Base & (
  | { __typename: 'QueuedEvent'; position: number | null }
  | { __typename: 'CompilingEvent'; cached: boolean }
  | { __typename: 'RunningEvent'; test: number; tests: number }
  | { __typename: 'OutputEvent'; test: number; stream: 'STDOUT' | 'STDERR'; chunk: string }
  | { __typename: 'TestFinishedEvent'; result: TestResult }
  | { __typename: 'FinishedEvent'; submission: Submission }
);

export interface SubmitInput {
  language: string; source: string; stdin?: string;
  tests?: { stdin: string; expectedOutput?: string }[];
  limits?: Partial<Record<'cpuTimeMs' | 'wallTimeMs' | 'memoryKb' | 'outputBytes' | 'processes', number>>;
  compare?: string; stopOnFirstFailure?: boolean;
}

const RESULT = 'index verdict timeMs wallTimeMs memoryKb exitCode signal stdout stderr truncated';
const SUBMISSION = `id language status verdict compileOutput testCount timeMs memoryKb message tests { ${RESULT} }`;

export const EVENTS = `subscription Events($id: ID!, $afterSeq: Int) {
  submissionEvents(id: $id, afterSeq: $afterSeq) {
    __typename seq at
    ... on QueuedEvent { position }
    ... on CompilingEvent { cached }
    ... on RunningEvent { test tests }
    ... on OutputEvent { test stream chunk }
    ... on TestFinishedEvent { result { ${RESULT} } }
    ... on FinishedEvent { submission { ${SUBMISSION} } }
  }
}`;

export type ConnState = 'connecting' | 'connected' | 'reconnecting' | 'unauthorized';

/** graphql-ws close code Verdict uses for a missing or refused API key. */
const FORBIDDEN = 4403;
const isClose = (e: unknown): e is CloseEvent =>
  !!e && typeof e === 'object' && 'code' in e && typeof (e as CloseEvent).code === 'number';

export class Api {
  private client: Client;
  private everConnected = false;

  constructor(
    private apiKey: () => string,
    private onState: (s: ConnState, detail?: string) => void,
  ) {
    this.client = this.makeClient();
  }

  private authHeaders(): Record<string, string> {
    const key = this.apiKey();
    return key ? { authorization: `Bearer ${key}` } : {};
  }

  private makeClient(): Client {
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/graphql`;
    let attempt = 0;
    return createClient({
      url,
      // Read at every (re)connect, so a changed key applies to the next connection.
      connectionParams: () => this.authHeaders(),
      lazy: false, // connect at once so that the indicator tells the truth
      keepAlive: 10_000,
      retryAttempts: Infinity,
      // Retry on everything (the default gives up on some close codes: a restarting
      // server may close or refuse in many ways) except a refused API key, which only
      // the user can fix (changing the key reconnects).
      shouldRetry: (e) => !(isClose(e) && e.code === FORBIDDEN),
      retryWait: async (retries) => {
        attempt = retries + 1;
        const ms = Math.min(300 * 2 ** retries, 3000) + Math.random() * 200;
        await new Promise((r) => setTimeout(r, ms));
      },
      on: {
        connecting: () => this.onState(this.everConnected ? 'reconnecting' : 'connecting',
          this.everConnected && attempt ? `attempt ${attempt}` : undefined),
        connected: () => { this.everConnected = true; attempt = 0; this.onState('connected'); },
        closed: (e) => {
          if (isClose(e) && e.code === FORBIDDEN) this.onState('unauthorized', e.reason);
          else if (this.everConnected) this.onState('reconnecting');
        },
      },
    });
  }

  /** A new connection with the current API key; subscriptions of the old one end. */
  reconnect(): void {
    const old = this.client;
    this.everConnected = false;
    this.client = this.makeClient();
    void old.dispose();
  }

  async request<T>(query: string, variables: Record<string, unknown> = {}): Promise<T> {
    const res = await fetch('/graphql', {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...this.authHeaders() },
      body: JSON.stringify({ query, variables }),
    });
    let body: { data?: T; errors?: { message: string }[] };
    try {
      body = await res.json();
    } catch {
      const hint = res.status === 401 || res.status === 403 ? ': set the API key' : '';
      throw new Error(`HTTP ${res.status} ${res.statusText}${hint}`);
    }
    if (body.errors?.length) throw new Error(body.errors.map((e) => e.message).join('; '));
    if (!res.ok || !body.data) throw new Error(`HTTP ${res.status} ${res.statusText}`);
    return body.data;
  }

  languages(): Promise<Language[]> {
    return this.request<{ languages: Language[] }>('{ languages { id name version compiled } }')
      .then((d) => d.languages);
  }

  submit(input: SubmitInput): Promise<{ id: string; status: string }> {
    return this.request<{ submit: { id: string; status: string } }>(
      'mutation Submit($input: SubmitInput!) { submit(input: $input) { id status } }',
      { input },
    ).then((d) => d.submit);
  }

  cancel(id: string): Promise<void> {
    return this.request('mutation Cancel($id: ID!) { cancel(id: $id) { id status } }', { id })
      .then(() => undefined);
  }

  /**
   * Every event of a submission after `afterSeq`: the past ones replayed, then the live
   * ones. When the connection drops, graphql-ws reconnects and sends the subscription
   * again; `variables.afterSeq` is kept at the last seq seen, so the server replays only
   * what was missed. Returns a function that stops the subscription.
   */
  events(
    id: string,
    afterSeq: number,
    sink: { next: (e: SubmissionEvent) => void; error: (msg: string) => void; complete: () => void },
  ): () => void {
    const variables = { id, afterSeq: afterSeq > 0 ? afterSeq : null };
    let last = afterSeq;
    return this.client.subscribe<{ submissionEvents: SubmissionEvent }>(
      { query: EVENTS, variables },
      {
        next: (msg) => {
          if (msg.errors?.length) {
            sink.error(msg.errors.map((e) => e.message).join('; '));
            return;
          }
          const ev = msg.data?.submissionEvents;
          if (!ev || ev.seq <= last) return; // never show an event twice
          last = ev.seq;
          variables.afterSeq = ev.seq; // graphql-ws re-sends this object on reconnect
          sink.next(ev);
        },
        error: (err) => sink.error(describe(err)),
        complete: sink.complete,
      },
    );
  }
}

function describe(err: unknown): string {
  if (Array.isArray(err)) return err.map((e) => (e as { message?: string }).message ?? String(e)).join('; ');
  if (err instanceof Error) return err.message;
  if (err && typeof err === 'object' && 'code' in err) {
    const c = err as { code: number; reason?: string };
    return `connection closed (${c.code}${c.reason ? `: ${c.reason}` : ''})`;
  }
  return String(err);
}
