export { type CellClient, kubeconfigPath, kubeErrorStatus, loadCellClient } from './cells.ts';
export { type InformerEvent, type InformerOptions, ResilientInformer, setInformerRestartRate } from './informer.ts';
