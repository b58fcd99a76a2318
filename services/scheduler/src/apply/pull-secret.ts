/**
 * The credential each cell pulls images with (docs/scheduler.md, "Registry credentials"): the
 * scheduler holds the cells key and derives one robot credential per cell from it
 * (`cellPullCredential`, packages/shared/src/registry), which goes into a
 * `kubernetes.io/dockerconfigjson` Secret in every app namespace of that cell.
 *
 * Every value that carries the password (the password, the basic `auth` and the Secret's encoded
 * content) is registered with the log scrubber the moment it is made, so no log line or event
 * can show it whatever it quotes.
 */
import { registerSecret } from '@berth/shared/logging';
import { cellPullCredential } from '@berth/shared/registry';

/** The name of the pull Secret in every app namespace; the pods' `imagePullSecrets` name it. */
export const PULL_SECRET = 'berth-registry';

/** The content of a cell's pull Secret: its `.dockerconfigjson`, base64 as Secret data. */
export interface PullCredentials {
  dockerConfigJson(cell: string): string;
}

export class CellPullCredentials implements PullCredentials {
  readonly #cellsKey: Buffer;
  readonly #region: string;
  readonly #registry: string;
  /** Per cell: the HMAC and the encoding are done once per process, not per app and pass. */
  readonly #byCell = new Map<string, string>();

  constructor(options: { cellsKey: Buffer; region: string; registry: string }) {
    this.#cellsKey = options.cellsKey;
    this.#region = options.region;
    this.#registry = options.registry;
  }

  dockerConfigJson(cell: string): string {
    let encoded = this.#byCell.get(cell);
    if (encoded === undefined) {
      const { username, password } = cellPullCredential(this.#cellsKey, this.#region, cell);
      const auth = Buffer.from(`${username}:${password}`).toString('base64');
      encoded = Buffer.from(JSON.stringify({ auths: { [this.#registry]: { username, password, auth } } })).toString(
        'base64',
      );
      registerSecret(password);
      registerSecret(auth);
      registerSecret(encoded);
      this.#byCell.set(cell, encoded);
    }
    return encoded;
  }
}
