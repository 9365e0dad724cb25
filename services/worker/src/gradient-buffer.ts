/**
 * The one flat float32 buffer a step all-reduces (docs/cluster.md, step loop item 8): every
 * trainable parameter's gradient in sorted name order, then one slot for the rank's share
 * of the loss. Summed over ranks, the gradients are the global-batch gradient and the last
 * slot is the global loss, so every rank makes the same finite check. The step all-reduces
 * it in fusion buckets ({@link GradientLayout.parts} with `allReduceFused`).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { FusedPart } from '@dinofleet/collective';
import { isTrainable } from '@dinofleet/dino';

/** Where one parameter's gradient lies in the buffer. */
export interface GradientSlot {
  /** Parameter name. */
  readonly name: string;
  /** Its shape. */
  readonly shape: readonly number[];
  /** First element in the buffer. */
  readonly offset: number;
  /** Number of elements. */
  readonly size: number;
}

/** The layout of the buffer: trainable parameters in sorted name order, then the loss slot. */
export class GradientLayout {
  /** One slot per trainable parameter, in buffer order. */
  readonly slots: readonly GradientSlot[];
  /** Elements of the gradients (the loss slot is at this index). */
  readonly gradientSize: number;

  /** @param params the student's parameters (non-trainable ones are left out). */
  constructor(params: Readonly<Record<string, tf.Tensor>>) {
    const slots: GradientSlot[] = [];
    let offset = 0;
    for (const name of Object.keys(params).filter(isTrainable).sort()) {
      const shape = [...(params[name] as tf.Tensor).shape];
      const size = shape.reduce((a, b) => a * b, 1);
      slots.push({ name, shape, offset, size });
      offset += size;
    }
    this.slots = slots;
    this.gradientSize = offset;
  }

  /** Elements of the whole buffer: the gradients and the loss slot. */
  get size(): number {
    return this.gradientSize + 1;
  }

  /**
   * The buffer as `allReduceFused` parts, in buffer order: one per gradient (its
   * `read` downloads the tensor with `data()`), then the loss slot. The fused result is
   * the flat buffer {@link unflatten} reads. The tensors stay the
   * caller's and must live until the fused call has settled.
   * @throws Error for a missing gradient or one of the wrong size (checked here, before any read).
   */
  parts(grads: Readonly<Record<string, tf.Tensor>>, loss: number): FusedPart[] {
    const parts: FusedPart[] = this.slots.map((slot) => {
      const grad = this.#gradient(grads, slot);
      // Gradients are float32 (the layout's dtype); allReduceFused checks the length.
      return { length: slot.size, read: async () => (await grad.data()) as Float32Array };
    });
    parts.push({ length: 1, read: () => Float32Array.of(loss) });
    return parts;
  }

  #gradient(grads: Readonly<Record<string, tf.Tensor>>, slot: GradientSlot): tf.Tensor {
    const grad = grads[slot.name];
    if (grad === undefined) throw new Error(`GradientLayout.parts: no gradient for ${slot.name}`);
    if (grad.size !== slot.size) {
      throw new Error(`GradientLayout.parts: gradient of ${slot.name} has ${grad.size} elements, the parameter ${slot.size}`);
    }
    return grad;
  }

  /**
   * Tensors of every gradient (copied into new tensors, owned by the caller) and the
   * loss slot of `buffer`.
   */
  unflatten(buffer: Float32Array): { grads: Record<string, tf.Tensor>; loss: number } {
    if (buffer.length !== this.size) throw new Error(`GradientLayout.unflatten: buffer has ${buffer.length} elements, expected ${this.size}`);
    const grads: Record<string, tf.Tensor> = {};
    for (const slot of this.slots) {
      grads[slot.name] = tf.tensor(buffer.slice(slot.offset, slot.offset + slot.size), [...slot.shape], 'float32');
    }
    return { grads, loss: buffer[this.gradientSize] as number };
  }
}
