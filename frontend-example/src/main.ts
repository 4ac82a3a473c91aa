// The example app: submit code, then watch its events arrive over a graphql-ws
// subscription. No polling anywhere.
import './style.css';
import { Api, type ConnState, type Language, type SubmissionEvent, type SubmitInput, type Verdict } from './api';
import { Editor, TEMPLATES } from './editor';

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

const LABELS: Record<Verdict, string> = {
  ACCEPTED: 'Accepted',
  WRONG_ANSWER: 'Wrong Answer',
  TIME_LIMIT_EXCEEDED: 'Time Limit Exceeded',
  MEMORY_LIMIT_EXCEEDED: 'Memory Limit Exceeded',
  OUTPUT_LIMIT_EXCEEDED: 'Output Limit Exceeded',
  RUNTIME_ERROR: 'Runtime Error',
  COMPILATION_ERROR: 'Compilation Error',
  CANCELLED: 'Cancelled',
  INTERNAL_ERROR: 'Internal Error',
};

// ---------------------------------------------------------------------------------------
// Connection

const conn = $('conn');
const keyInput = $<HTMLInputElement>('api-key');
keyInput.value = localStorage.getItem('verdict.apiKey') ?? '';

let wasLost = false;
function showConn(state: ConnState, detail?: string): void {
  // Tell the watcher of a running submission about the outage and the resume.
  if (current && !current.finished) {
    if (state === 'reconnecting' && !wasLost) line('Connection lost: reconnecting…');
    if (state === 'connected' && wasLost) line(`Reconnected: resuming after event ${current.lastSeq}`);
  }
  if (state === 'reconnecting') wasLost = true;
  if (state === 'connected') wasLost = false;
  conn.dataset.state = state;
  conn.textContent = state === 'connected' ? 'Connected'
    : state === 'reconnecting' ? `Reconnecting…${detail ? ` (${detail})` : ''}`
    : state === 'unauthorized' ? 'API key refused'
    : 'Connecting…';
}

const api = new Api(() => keyInput.value.trim(), showConn);

keyInput.addEventListener('change', () => {
  localStorage.setItem('verdict.apiKey', keyInput.value.trim());
  api.reconnect();
  void loadLanguages();
  // Subscriptions of the old connection ended: watch the current submission again.
  if (current && !current.finished) open(current.id);
});

// ---------------------------------------------------------------------------------------
// Inputs

const langSelect = $<HTMLSelectElement>('language');
let languages: Language[] = [];
let edited = false;

const editor = new Editor($('editor'), TEMPLATES.python3, () => void run(), () => { edited = true; });
editor.setLanguage('python3');

let langRetry: ReturnType<typeof setTimeout> | undefined;
async function loadLanguages(): Promise<void> {
  clearTimeout(langRetry);
  try {
    languages = await api.languages();
  } catch (e) {
    $('form-error').textContent = `Could not load languages: ${(e as Error).message}`;
    langRetry = setTimeout(() => void loadLanguages(), 2000);
    return;
  }
  $('form-error').textContent = '';
  const current = langSelect.value || 'python3';
  langSelect.replaceChildren(...languages.map((l) => {
    const o = document.createElement('option');
    o.value = l.id;
    o.textContent = l.name;
    return o;
  }));
  langSelect.value = languages.some((l) => l.id === current) ? current : languages[0]?.id ?? '';
  showLanguage();
}

function showLanguage(): void {
  const l = languages.find((x) => x.id === langSelect.value);
  $('lang-version').textContent = l ? `${l.version}${l.compiled ? ' · compiled' : ''}` : '';
  editor.setLanguage(langSelect.value);
}

langSelect.addEventListener('change', () => {
  showLanguage();
  const t = TEMPLATES[langSelect.value];
  if (!edited && t) {
    editor.value = t;
    edited = false;
  }
});

const testsBox = $('tests');
function addTest(stdin = '', expected = ''): void {
  const div = document.createElement('div');
  div.className = 'test';
  const n = document.createElement('span');
  n.className = 'n';
  const i = document.createElement('textarea');
  i.className = 'test-stdin';
  i.placeholder = 'stdin';
  i.value = stdin;
  i.spellcheck = false;
  const o = document.createElement('textarea');
  o.className = 'test-expected';
  o.placeholder = 'expected output';
  o.value = expected;
  o.spellcheck = false;
  const rm = document.createElement('button');
  rm.type = 'button';
  rm.textContent = '✕';
  rm.title = 'Remove this test';
  rm.setAttribute('aria-label', 'Remove test');
  rm.addEventListener('click', () => { div.remove(); numberTests(); });
  div.append(n, i, o, rm);
  testsBox.append(div);
  numberTests();
}
function numberTests(): void {
  testsBox.querySelectorAll('.test .n').forEach((n, k) => { n.textContent = `#${k + 1}`; });
}
$('add-test').addEventListener('click', () => addTest());

function readInput(): SubmitInput {
  const input: SubmitInput = {
    language: langSelect.value,
    source: editor.value,
    compare: $<HTMLSelectElement>('compare').value,
    stopOnFirstFailure: $<HTMLInputElement>('stop-first').checked,
  };
  const tests = [...testsBox.querySelectorAll('.test')].map((t) => ({
    stdin: (t.querySelector('.test-stdin') as HTMLTextAreaElement).value,
    expectedOutput: (t.querySelector('.test-expected') as HTMLTextAreaElement).value,
  }));
  if (tests.length) input.tests = tests;
  else input.stdin = $<HTMLTextAreaElement>('stdin').value;
  const limits: NonNullable<SubmitInput['limits']> = {};
  const fields = { cpu: 'cpuTimeMs', wall: 'wallTimeMs', mem: 'memoryKb', out: 'outputBytes', procs: 'processes' } as const;
  for (const [id, name] of Object.entries(fields)) {
    const v = $<HTMLInputElement>(id).value.trim();
    if (v) limits[name] = Number(v);
  }
  if (Object.keys(limits).length) input.limits = limits;
  return input;
}

// ---------------------------------------------------------------------------------------
// One submission on screen

interface HistoryItem { id: string; language: string; at: string; verdict: Verdict | null }
const history: HistoryItem[] = JSON.parse(sessionStorage.getItem('verdict.history') ?? '[]');
function saveHistory(): void {
  sessionStorage.setItem('verdict.history', JSON.stringify(history.slice(0, 50)));
  renderHistory();
}

let current: {
  id: string; stop: () => void; finished: boolean; lastSeq: number; lastTest: Record<string, number>;
} | null = null;
const timeline = $('timeline');
const verdictBox = $('verdict');

function clearView(): void {
  timeline.replaceChildren();
  $('stdout').textContent = '';
  $('stderr').textContent = '';
  $('compile').textContent = '';
  $('compile-box').hidden = true;
  $('summary').textContent = '';
  setVerdict('', 'Submitting…');
}

function setVerdict(v: Verdict | '', text: string): void {
  verdictBox.dataset.verdict = v;
  verdictBox.textContent = text;
}

function line(html: string | Node[], at?: string): void {
  const li = document.createElement('li');
  if (at) {
    const t = document.createElement('span');
    t.className = 't';
    t.textContent = new Date(at).toLocaleTimeString([], { hour12: false }) + '.' +
      String(new Date(at).getMilliseconds()).padStart(3, '0');
    li.append(t);
  }
  if (typeof html === 'string') li.append(html);
  else li.append(...html);
  timeline.append(li);
}

function verdictSpan(v: Verdict): HTMLElement {
  const s = document.createElement('span');
  s.className = `v-${v}`;
  s.textContent = LABELS[v] ?? v;
  return s;
}

function onEvent(ev: SubmissionEvent): void {
  if (!current) return;
  current.lastSeq = ev.seq;
  switch (ev.__typename) {
    case 'QueuedEvent':
      line(`Queued${ev.position != null ? ` (position ${ev.position})` : ''}`, ev.at);
      setVerdict('', 'Queued');
      break;
    case 'CompilingEvent':
      line(ev.cached ? 'Compiling (cached: no compiler run)' : 'Compiling', ev.at);
      setVerdict('', 'Compiling…');
      break;
    case 'RunningEvent':
      line(`Running test ${ev.test}/${ev.tests}`, ev.at);
      setVerdict('', `Running ${ev.test}/${ev.tests}…`);
      break;
    case 'OutputEvent': {
      const pane = $(ev.stream === 'STDOUT' ? 'stdout' : 'stderr');
      const last = current.lastTest[ev.stream];
      if (last !== undefined && last !== ev.test) pane.textContent += `\n── test ${ev.test} ──\n`;
      current.lastTest[ev.stream] = ev.test;
      pane.textContent += ev.chunk;
      break;
    }
    case 'TestFinishedEvent': {
      const r = ev.result;
      line([document.createTextNode(`Test ${r.index}: `), verdictSpan(r.verdict),
        document.createTextNode(` · ${r.timeMs} ms · ${r.memoryKb} KiB${r.exitCode != null ? ` · exit ${r.exitCode}` : ''}${r.signal != null ? ` · signal ${r.signal}` : ''}${r.truncated ? ' · truncated' : ''}`)], ev.at);
      break;
    }
    case 'FinishedEvent': {
      const s = ev.submission;
      current.finished = true;
      const v = s.verdict ?? 'INTERNAL_ERROR';
      line([document.createTextNode('Finished: '), verdictSpan(v)], ev.at);
      setVerdict(v, LABELS[v] ?? v);
      const parts = [];
      if (s.timeMs != null) parts.push(`${s.timeMs} ms`);
      if (s.memoryKb != null) parts.push(`${s.memoryKb} KiB`);
      parts.push(`${s.tests.length}/${s.testCount} tests run`);
      if (s.message) parts.push(s.message);
      $('summary').textContent = parts.join(' · ');
      if (s.compileOutput) {
        $('compile').textContent = s.compileOutput;
        $('compile-box').hidden = false;
      }
      // Output that came before this page subscribed and was not replayed as chunks.
      if (!$('stdout').textContent) $('stdout').textContent = s.tests.map((t) => t.stdout).join('');
      if (!$('stderr').textContent) $('stderr').textContent = s.tests.map((t) => t.stderr).join('');
      const h = history.find((x) => x.id === s.id);
      if (h) { h.verdict = v; saveHistory(); }
      setRunning(false);
      break;
    }
  }
}

function open(id: string): void {
  current?.stop();
  clearView();
  setVerdict('', 'Waiting for events…');
  const me = { id, stop: () => {}, finished: false, lastSeq: 0, lastTest: {} as Record<string, number> };
  current = me;
  setRunning(true);
  renderHistory();
  // On a phone the result is below the form: bring it into view.
  if (window.matchMedia('(max-width: 800px)').matches) verdictBox.scrollIntoView({ block: 'start' });
  me.stop = api.events(id, 0, {
    next: (ev) => { if (current === me) onEvent(ev); },
    error: (msg) => {
      if (current !== me) return;
      line(`Error: ${msg}`);
      if (!me.finished) setVerdict('', 'Lost: see the timeline');
      setRunning(false);
    },
    complete: () => { if (current === me && !me.finished) setRunning(false); },
  });
}

function setRunning(running: boolean): void {
  $<HTMLButtonElement>('cancel').hidden = !running;
  $<HTMLButtonElement>('run').disabled = running;
}

let submitting = false;
async function run(): Promise<void> {
  if (submitting || (current && !current.finished && !$<HTMLButtonElement>('cancel').hidden)) return;
  submitting = true;
  $('form-error').textContent = '';
  try {
    const input = readInput();
    const { id } = await api.submit(input);
    history.unshift({ id, language: input.language, at: new Date().toISOString(), verdict: null });
    saveHistory();
    open(id);
  } catch (e) {
    $('form-error').textContent = `Submit failed: ${(e as Error).message}`;
  } finally {
    submitting = false;
  }
}

$('run').addEventListener('click', () => void run());
$('cancel').addEventListener('click', async () => {
  if (!current) return;
  try {
    await api.cancel(current.id);
  } catch (e) {
    $('form-error').textContent = `Cancel failed: ${(e as Error).message}`;
  }
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    void run();
  }
});

function renderHistory(): void {
  $('history').replaceChildren(...history.map((h) => {
    const li = document.createElement('li');
    if (current?.id === h.id) li.className = 'current';
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = `${new Date(h.at).toLocaleTimeString([], { hour12: false })} · ${h.language}`;
    b.title = `Re-open ${h.id}`;
    b.dataset.id = h.id;
    b.addEventListener('click', () => open(h.id));
    li.append(b);
    if (h.verdict) li.append(verdictSpan(h.verdict));
    return li;
  }));
}

renderHistory();
void loadLanguages();
