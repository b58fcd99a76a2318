import { BerthError, type ErrorOptions } from '@berth/shared/errors';

/** What the plugin itself refuses; main maps each code to the spec's number (CNI_ERROR_CODES). */
export type CniFailure =
  /** The runtime asked for a CNI version the plugin does not speak. */
  | 'cni-incompatible-version'
  /** A CNI_* variable is missing or holds something the plugin cannot act on. */
  | 'cni-invalid-environment'
  /** stdin is not JSON. */
  | 'cni-decode-failure'
  /** The network configuration is JSON but a field is missing or wrong. */
  | 'invalid-netconf'
  /** CHECK: the container holds another address than its previous result says. */
  | 'allocation-mismatch';

export class CniError extends BerthError {
  /** The spec's `details`: what the message does not say (e.g. the JSON parser's own words). */
  readonly details: string;

  constructor(code: CniFailure, message: string, details = '', options: ErrorOptions = {}) {
    super(message, { ...options, code });
    this.details = details;
  }
}
