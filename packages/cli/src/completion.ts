/** Completion scripts for bash and zsh, from the program's own command tree. */
import type { Command } from 'commander';

type Tree = Map<string, string[]>;

function tree(program: Command): Tree {
  const words: Tree = new Map();
  const walk = (cmd: Command, path: string) => {
    const subs = cmd.commands.map((c) => c.name());
    const flags = cmd.options.flatMap((o) => [o.long, o.short].filter((f): f is string => Boolean(f)));
    words.set(path, [...subs, ...flags]);
    for (const sub of cmd.commands) walk(sub, path ? `${path} ${sub.name()}` : sub.name());
  };
  walk(program, '');
  return words;
}

export function completionScript(program: Command, shell: 'bash' | 'zsh'): string {
  const cases = [...tree(program)].map(([path, words]) => `    "${path}") words="${words.join(' ')}" ;;`).join('\n');
  const fn = `_berth_complete() {
  local cur path w
  cur="\${COMP_WORDS[COMP_CWORD]}"
  path=""
  for w in "\${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
    case "$w" in -*) ;; *) if [ -z "$path" ]; then cand="$w"; else cand="$path $w"; fi
      case "$cand" in
${[...tree(program).keys()]
  .filter(Boolean)
  .map((p) => `        "${p}") path="$cand" ;;`)
  .join('\n')}
      esac ;;
    esac
  done
  local words=""
  case "$path" in
${cases}
  esac
  COMPREPLY=( $(compgen -W "$words" -- "$cur") )
}
`;
  if (shell === 'bash')
    return `# berth completion for bash: source <(berth completion bash)\n${fn}complete -F _berth_complete berth\n`;
  return `#compdef berth\n# berth completion for zsh: source <(berth completion zsh)\nautoload -U +X bashcompinit && bashcompinit\n${fn}complete -F _berth_complete berth\n`;
}
