// CodeMirror 6 with the highlighting of the selected language.
import { basicSetup, EditorView } from 'codemirror';
import { Compartment, Prec, type Extension } from '@codemirror/state';
import { keymap } from '@codemirror/view';
import { StreamLanguage } from '@codemirror/language';
import { python } from '@codemirror/lang-python';
import { cpp } from '@codemirror/lang-cpp';
import { javascript } from '@codemirror/lang-javascript';
import { java } from '@codemirror/lang-java';
import { rust } from '@codemirror/lang-rust';
import { shell } from '@codemirror/legacy-modes/mode/shell';

function languageSupport(id: string): Extension {
  if (id.startsWith('python')) return python();
  if (id === 'c' || id === 'cpp' || id.startsWith('c++')) return cpp();
  if (id === 'javascript' || id === 'node' || id === 'typescript') return javascript({ typescript: id === 'typescript' });
  if (id === 'java') return java();
  if (id === 'rust') return rust();
  if (id === 'bash' || id === 'sh') return StreamLanguage.define(shell);
  return [];
}

export class Editor {
  private view: EditorView;
  private lang = new Compartment();

  constructor(parent: HTMLElement, doc: string, onRun: () => void, onChange: () => void) {
    this.view = new EditorView({
      parent,
      doc,
      extensions: [
        Prec.highest(keymap.of([{ key: 'Mod-Enter', run: () => { onRun(); return true; } }])),
        basicSetup,
        this.lang.of([]),
        EditorView.updateListener.of((u) => { if (u.docChanged) onChange(); }),
        EditorView.contentAttributes.of({ 'aria-label': 'Source code' }),
      ],
    });
  }

  get value(): string { return this.view.state.doc.toString(); }

  set value(text: string) {
    this.view.dispatch({ changes: { from: 0, to: this.view.state.doc.length, insert: text } });
  }

  setLanguage(id: string): void {
    this.view.dispatch({ effects: this.lang.reconfigure(languageSupport(id)) });
  }
}

export const TEMPLATES: Record<string, string> = {
  python3: "print('Hello, world!')\n",
  c: '#include <stdio.h>\n\nint main(void) {\n    printf("Hello, world!\\n");\n    return 0;\n}\n',
  cpp: '#include <iostream>\n\nint main() {\n    std::cout << "Hello, world!" << std::endl;\n}\n',
  rust: 'fn main() {\n    println!("Hello, world!");\n}\n',
  javascript: "console.log('Hello, world!');\n",
  java: 'public class Main {\n    public static void main(String[] args) {\n        System.out.println("Hello, world!");\n    }\n}\n',
  bash: 'echo "Hello, world!"\n',
};
